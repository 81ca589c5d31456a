"""The TRICE benchmark's CLI on a CI-sized run: tables, variance rows, JSON, figures, report."""

from __future__ import annotations

import json

import pytest
from ppl.models.trice import benchmark


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trice")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PPL_CACHE", str(root / "cache"))
        path = root / "quick.json"
        record = benchmark.main(
            [
                "--quick",
                "--methods",
                "trice-cv,rejection",
                "--json",
                str(path),
                "--figures",
                str(root / "figures"),
            ]
        )
    return record, path, root


def test_quick_run_prints_tables_and_writes_json_and_figures(quick_run, capsys) -> None:
    record, path, root = quick_run
    saved = json.loads(path.read_text())
    assert saved["config"]["methods"] == ["trice-cv", "rejection"] == record["config"]["methods"]
    assert set(saved["summary"]["methods"]) == {"trice-cv", "rejection"}
    cv = saved["summary"]["methods"]["trice-cv"]
    assert set(cv["heldout_per_k"]) == {"3", "4", "5", "6", "7", "8"}
    assert 0.0 <= cv["hard"]["mean"] <= 1.0 and 0.0 <= cv["acceptance"]["mean"] <= 1.0
    steps = [row["step"] for row in saved["variance"]]
    assert steps[0] == 0 and steps[-1] == benchmark.QUICK["config"].steps
    for row in saved["variance"]:
        assert all(row[name] > 0 for name in ("basic", "control_variate", "subsampled"))
    assert "star" not in saved["summary"].get("beats", {}) and "rejection" in saved["summary"]["beats"]
    assert (root / "figures" / "trice-learning-curves.png").stat().st_size > 0
    assert (root / "figures" / "trice-variance.png").stat().st_size > 0
    assert saved["runs"]["trice-cv"][0]["step_ms"] > 0
    benchmark.main(["--report", str(path)])
    out = capsys.readouterr().out
    for text in (
        "held-out greedy accuracy",
        "gradient variance",
        "basic/cv",
        "ms per step",
        "TRICE-CV hard-split",
    ):
        assert text in out, text


def test_unknown_method_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--methods", "trice-cv,sft"])
    assert "unknown method(s) sft" in capsys.readouterr().err
