"""The noisy cone (Table 4): protocol, table format and the paper's values."""

from __future__ import annotations

import json

import pytest
from ppl.models import cone


def test_short_run_prints_the_table_and_writes_the_json_format(tmp_path, capsys) -> None:
    path = tmp_path / "cone.json"
    result = cone.main(["--steps", "300", "--json", str(path)])
    written = json.loads(path.read_text())
    assert set(cone.NAMES) == set(written["ours"]) == set(written["paper"])
    assert set(written["numpyro"]) == {"ELBO", "IWELBO(5)"}
    out = capsys.readouterr().out
    for name in cone.NAMES:
        assert name in out
    ours = result["ours"]
    # Orderings that hold already early in training: more inner particles, tighter bound.
    assert ours["HVI"] < ours["IWHVI(5)"] < ours["DIWHVI(5,5)"]
    assert ours["ELBO"] < ours["IWELBO(5)"]


@pytest.mark.slow
def test_full_protocol_reproduces_table_4() -> None:
    """5000 steps: every value within 0.1 of the paper, except IWELBO(5).

    Under this protocol IWELBO(5) reaches -7.53 for us and -7.55 for NumPyro's
    RenyiELBO(alpha=0), both above the paper's -7.79/-7.77; we check agreement
    with NumPyro there instead.
    """
    result = cone.run(5000)
    for name in ("ELBO", "HVI", "IWHVI(5)", "DIWHVI(5,5)"):
        assert abs(result["ours"][name] - cone.PAPER[name]) < 0.1, (name, result["ours"][name])
    assert abs(result["ours"]["IWELBO(5)"] - result["numpyro"]["IWELBO(5)"]) < 0.1
