"""The partseg benchmark's CLI: tables, summary, targets and JSON on tiny runs."""

from __future__ import annotations

import json

import pytest
from ppl.models.partseg import benchmark

from ppl import transforms as T


def test_tiny_run_tables_summary_and_json(tmp_path, capsys) -> None:
    path = tmp_path / "tiny.json"
    record = benchmark.main(
        [
            "--shapes=1",
            "--seeds=1",
            "--resolution=64",
            "--categories=chair,storage",
            "--variants=heuristic,truth",
            "--noise=heavy",
            "--no-progress",
            f"--json={path}",
        ]
    )
    out = capsys.readouterr().out
    assert "\nmask noise: heavy\n" in out
    for text in ("chair: 1 shapes", "storage: 1 shapes", "superpoint purity", "s/shape", "1st call"):
        assert text in out, text
    assert "seat" in out and "door" in out  # per-class AP50 columns
    assert "EM (hard) − heuristic AP50 per category" in out
    assert "[target ≥ 10 on every category: n/a]" in out  # em-hard did not run
    assert "target ≤ 1 s on CPU: n/a" in out
    saved = json.loads(path.read_text())
    assert saved["complete"] and saved["config"]["variants"] == ["heuristic", "truth"]
    assert saved["config"]["noise"] == "heavy" and "false_positive=1.0" in saved["config"]["mask_noise"]
    assert saved["machine"]["jax"] and saved["machine"]["cpu_count"]
    chair = saved["categories"]["chair"]
    (block,) = chair["blocks"]
    assert set(block["variants"]) == {"heuristic", "truth"}
    assert block["variants"]["truth"]["AP50"] >= block["variants"]["heuristic"]["AP50"]
    assert len(block["variants"]["truth"]["AP50_per_class"]) == 4
    assert 50.0 < chair["summary"]["purity"]["mean"] <= 100.0
    assert record["targets"]["gain_met"] is None


def _fake_record(heur: list[float], em: list[float], em_s: float, backend: str = "cpu") -> dict:
    """A record with two seeds of one category, as :func:`benchmark.run` leaves it."""
    classes = 4

    def row(ap: float, em_row: bool) -> dict:
        return {
            "AP50": ap,
            "mIoU": ap,
            "AP50_per_class": [ap, float("nan"), ap, ap][:classes],
            "IoU_per_class": [ap] * classes,
            "s": [0.5, 0.7],
            "em_s": [em_s] if em_row else [],
            "failures": [],
        }

    blocks = [
        {
            "seed": s,
            "data_s": 0.1,
            "purity": [98.0, 97.0],
            "num_superpoints": [200, 210],
            "num_points": [4000, 4000],
            "variants": {"heuristic": row(h, False), "em-hard": row(e, True)},
        }
        for s, (h, e) in enumerate(zip(heur, em))
    ]
    record = {
        "config": {"variants": ["heuristic", "em-hard"]},
        "machine": {"backend": backend},
        "categories": {"chair": {"resolution": 160, "blocks": blocks}},
        "first_calls": {"em-hard": {"category": "chair", "seed": 0, "s": 3.0, "em_s": 2.5}},
    }
    benchmark._finish(record)
    return record


def test_summary_targets_met_and_not_met() -> None:
    met = _fake_record([40.0, 50.0], [55.0, 62.0], em_s=0.2)
    text = benchmark.format_report(met)
    assert "em-hard" in text and "55.0" not in text  # seeds are averaged: 58.5±3.5
    assert "58.5±3.5" in text and "45.0±5.0" in text
    assert "chair +13.5±1.5" in text
    assert "target ≥ 10 on every category: met" in text
    assert "0.200 s; first call 2.50 s (≈ 2.30 s compilation)" in text
    assert "target ≤ 1 s on CPU: met" in text
    assert met["targets"]["gain"]["chair"]["mean"] == pytest.approx(13.5)

    missed = _fake_record([40.0, 50.0], [45.0, 52.0], em_s=1.5, backend="gpu")
    text = benchmark.format_summary(missed)
    assert "target ≥ 10 on every category: NOT met" in text
    assert "target ≤ 1 s on CPU: NOT met (measured on gpu; the target is for CPU)" in text


def test_report_reprints_a_saved_record(tmp_path, capsys) -> None:
    path = tmp_path / "saved.json"
    record = _fake_record([40.0, 50.0], [55.0, 62.0], em_s=0.2)
    record["complete"] = False
    T.write_json(record, str(path))
    benchmark.main(["--report", str(path)])
    out = capsys.readouterr().out
    assert "58.5±3.5" in out and "partial record" in out


def test_unknown_variant_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--variants=heuristic,em-hardd", "--no-progress"])
    assert stop.value.code == 2
    assert "unknown variant(s) em-hardd" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes=0"], "argument --shapes: expected a positive integer, got '0'"),
        (["--shapes=two"], "argument --shapes: expected a positive integer, got 'two'"),
        (["--seeds=-2"], "argument --seeds: expected a positive integer, got '-2'"),
        (["--first-seed=-1"], "argument --first-seed: expected a non-negative integer, got '-1'"),
        (["--resolution=4"], "argument --resolution: expected an integer ≥ 8, got '4'"),
        (["--categories=,"], "expected comma-separated category names (no empty entries), got ','"),
        (["--categories=chair,sofa"], "unknown category(ies) sofa"),
        (["--categories=chair,chair"], "category(ies) named more than once: chair"),
        (["--variants=,"], "expected comma-separated variant names (no empty entries)"),
        (["--variants=heuristic,,truth"], "no empty entries"),
        (["--noise=loud"], "argument --noise: invalid choice: 'loud'"),
        (["--json=/nonexistent-folder/out.json"], "--json path '/nonexistent-folder/out.json': the folder"),
    ],
)
def test_misuse_exits_non_zero_with_a_message_before_running(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        benchmark.main([*args, "--no-progress"])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_json_path_that_is_a_folder_and_bad_report_are_usage_errors(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        benchmark.main([f"--json={tmp_path}", "--no-progress"])
    assert stop.value.code == 2 and "is a folder; give a file name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--report", str(tmp_path / "missing.json")])
    assert stop.value.code == 2 and "not a readable benchmark record" in capsys.readouterr().err


def test_empty_or_non_finite_results_are_reported() -> None:
    fine = _fake_record([40.0, 50.0], [55.0, 62.0], em_s=0.2)
    assert benchmark.result_problems(fine) == []
    broken = _fake_record([float("nan"), float("nan")], [55.0, 62.0], em_s=0.2)
    assert benchmark.result_problems(broken) == ["chair heuristic AP50", "chair heuristic mIoU"]
    fine["categories"]["chair"]["blocks"] = []
    assert benchmark.result_problems(fine) == ["no category ran"]


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path) -> None:
    path = tmp_path / "quick.json"
    record = benchmark.main(["--quick", "--no-progress", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["complete"] and set(saved["categories"]) == {"chair", "table", "storage"}
    assert saved["config"]["variants"] == list(benchmark.QUICK["variants"])
    for cat in saved["categories"].values():
        rows = cat["summary"]["variants"]
        assert set(rows) == set(benchmark.QUICK["variants"])
        assert rows["truth"]["AP50"]["mean"] >= rows["heuristic"]["AP50"]["mean"]
        assert rows["em-hard"]["em_s_median"] is not None
    assert record["targets"]["em_s_per_shape"] is not None
