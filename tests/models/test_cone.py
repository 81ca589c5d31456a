"""The noisy cone (Table 4): protocol, table format and the paper's values."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ppl.models import cone


@pytest.mark.slow
def test_short_run_prints_the_table_and_writes_the_json_format(tmp_path, capsys) -> None:
    path = tmp_path / "cone.json"
    result = cone.main(["--steps", "300", "--json", str(path)])
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON (T.write_json)
    written = json.loads(text)
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


def _no_training(*args, **kwargs):
    raise AssertionError("the CLI started training before rejecting its flags")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
        (["--steps", "ten"], "argument --steps: expected a positive integer, got 'ten'"),
        (["--seed", "-2"], "argument --seed: expected a non-negative integer, got '-2'"),
        (["--json", "/nonexistent-folder/cone.json"], "does not exist"),
        (["--figure", "/nonexistent-folder/cone.png"], "--figure path"),
    ],
)
def test_cli_misuse_exits_2_with_a_message_before_training(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cone, "run", _no_training)
    with pytest.raises(SystemExit) as exit_:
        cone.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_writes_strict_json_and_exits_1_on_non_finite_results(tmp_path, monkeypatch) -> None:
    result = {
        "ours": {name: -8.0 for name in cone.NAMES} | {"HVI": float("nan")},
        "numpyro": {"ELBO": -8.1, "IWELBO(5)": -7.8},
        "paper": cone.PAPER,
        "paper_numpyro": cone.PAPER_NUMPYRO,
        "steps": 1,
        "seconds": {},
        "params": {},
    }
    monkeypatch.setattr(cone, "run", lambda steps, seed: result)
    path = tmp_path / "cone.json"
    with pytest.raises(SystemExit) as exit_:
        cone.main(["--steps", "1", "--json", str(path)])
    assert "non-finite results at ours.HVI" in str(exit_.value)
    written = json.loads(path.read_text())
    assert written["ours"]["HVI"] is None and written["nonfinite"] == ["ours.HVI"]


def test_cli_misuse_exit_status_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ppl.models.cone", "--steps", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "expected a positive integer" in done.stderr
