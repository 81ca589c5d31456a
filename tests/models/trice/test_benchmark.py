"""The TRICE benchmark's CLI: a CI-sized run (tables, variance rows, JSON, figures, report,
checkpoints; slow), and misuse refused before anything runs."""

from __future__ import annotations

import json

import pytest
from ppl.models.trice import benchmark

QUICK_ARGS = ["--quick", "--methods", "trice-cv,rejection"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trice")
    (root / "checkpoints").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PPL_CACHE", str(root / "cache"))
        path = root / "quick.json"
        record = benchmark.main(
            [
                *QUICK_ARGS,
                "--json",
                str(path),
                "--figures",
                str(root / "figures"),
                "--checkpoints",
                str(root / "checkpoints"),
            ]
        )
    return record, path, root


@pytest.mark.slow  # the quick run pretrains and trains: about a minute on 2 CPU cores
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
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--quick", "--methods", "trice-cv,sft"])
    assert stop.value.code == 2
    assert "unknown method(s) sft" in capsys.readouterr().err


@pytest.mark.slow  # needs the quick run
def test_checkpoints_are_per_run_and_refused_for_another_configuration(
    quick_run, monkeypatch, capsys
) -> None:
    record, _, root = quick_run
    folder = root / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["trice-chain-sum-rejection-seed0.npz", "trice-chain-sum-trice-cv-seed0.npz"]
    monkeypatch.setenv("PPL_CACHE", str(root / "cache"))
    # The same configuration: the finished runs come back from their files, unchanged.
    again = benchmark.main([*QUICK_ARGS, "--checkpoints", str(folder)])
    for method in ("trice-cv", "rejection"):
        assert again["runs"][method][0]["history"] == record["runs"][method][0]["history"]
    # Another learning rate: the stored run is refused, naming what differs; exit status 1.
    with pytest.raises(SystemExit) as stop:
        benchmark.main([*QUICK_ARGS, "--learning-rate", "3e-4", "--checkpoints", str(folder)])
    assert stop.value.code != 0
    assert "belongs to another run (config: stored" in str(stop.value.code)
    assert "'learning_rate': 0.0001" in str(stop.value.code)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learning-rate", "nan"], "expected a finite positive number, got 'nan'"),
        (["--learning-rate=-1e-4"], "expected a finite positive number, got '-1e-4'"),
        (["--learning-rate", "0"], "expected a finite positive number, got '0'"),
        (["--learning-rate", "inf"], "expected a finite positive number, got 'inf'"),
        (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
        (["--seeds", "-1"], "argument --seeds: expected a positive integer, got '-1'"),
        (["--train-questions", "2.5"], "expected a positive integer, got '2.5'"),
        (["--batch-size", "1"], r"batch_size must be in [2, 32] (the training questions), got 1"),
        (["--batch-size", "64"], r"batch_size must be in [2, 32] (the training questions), got 64"),
        (["--methods", ","], "expected comma-separated method names (no empty entries), got ','"),
        (["--methods", ""], "expected comma-separated method names"),
        (["--methods", "gold,,direct"], "no empty entries"),
        (["--methods", "gold,gold"], "method(s) named more than once: gold"),
        (["--task", "sum"], "argument --task: invalid choice: 'sum'"),
        (["--json", "/nonexistent-folder/x.json"], "--json path '/nonexistent-folder/x.json': the folder"),
        (["--figures", "/nonexistent-folder/figs"], "--figures '/nonexistent-folder/figs': the folder"),
        (["--checkpoints", "/nonexistent-folder/ck"], "--checkpoints '/nonexistent-folder/ck': the folder"),
    ],
)
def test_misuse_exits_non_zero_with_a_message_before_running(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--quick", *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_output_paths_that_are_folders_or_files_are_refused(tmp_path, capsys) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for args, message in (
        (["--json", str(tmp_path)], "is a folder; give a file name"),
        (["--figures", str(afile)], "is a file, not a folder"),
        (["--checkpoints", str(afile)], "is a file, not a folder"),
    ):
        with pytest.raises(SystemExit) as stop:
            benchmark.main(["--quick", *args])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_report_of_a_missing_or_bad_file_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--report", str(tmp_path / "missing.json")])
    assert stop.value.code == 2 and "not a readable benchmark record" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SystemExit):
        benchmark.main(["--report", str(bad)])
    assert "not a readable benchmark record" in capsys.readouterr().err


def test_non_finite_results_are_found() -> None:
    record = {"base": [{"heldout": {"3": 0.5}}], "runs": {"gold": [{"history": [{"loss": float("nan")}]}]}}
    assert benchmark.nonfinite(record) == ["runs.gold[0].history[0].loss"]
    assert benchmark.nonfinite({"base": [], "runs": {}}) == []
