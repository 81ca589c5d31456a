"""The benchmark scripts' command lines: misuse exits 2 before any measurement, results are strict
JSON (``T.write_json``), non-finite results exit 1, and discrete_latents' summary never fails."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.join(os.path.dirname(HERE), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import discrete_latents  # noqa: E402
import enumeration  # noqa: E402
import overhead  # noqa: E402
import unnormalized_overhead  # noqa: E402
import vae_overhead  # noqa: E402

from ppl import transforms as T  # noqa: E402


def _no_measurement(*args, **kwargs):
    raise AssertionError("the script started measuring before rejecting its flags")


TIMING_MISUSE = [
    (["--batches", ","], "argument --batches: expected a comma-separated list of positive integers"),
    (["--batches", "64,,128"], "(no empty entries)"),
    (["--batches", "64,0"], "expected a positive integer, got '0'"),
    (["--repeats", "0"], "argument --repeats: expected a positive integer, got '0'"),
    (["--rounds", "-1"], "argument --rounds: expected a positive integer, got '-1'"),
    (["--compiles", "x"], "argument --compiles: expected a positive integer, got 'x'"),
    (["--runtime-checks", "maybe"], "argument --runtime-checks: invalid choice"),
    (["--json", "/nonexistent-folder/out.json"], "does not exist"),
]


@pytest.mark.parametrize("argv, message", TIMING_MISUSE)
def test_overhead_misuse_exits_2(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(overhead, "bench_batch", _no_measurement)
    with pytest.raises(SystemExit) as exit_:
        overhead.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        *TIMING_MISUSE,
        (["--objectives", ","], "(no empty entries)"),
        (["--objectives", "elbo,iwelbo9"], "unknown objective(s) iwelbo9; choose from elbo, iwelbo8"),
        (["--genjax-timeout", "nan"], "argument --genjax-timeout: expected a finite positive number"),
        (["--genjax-timeout", "0"], "argument --genjax-timeout: expected a finite positive number"),
        (["--markdown", "/nonexistent-folder/results.json"], "argument --markdown: no such file"),
    ],
)
def test_vae_overhead_misuse_exits_2(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(vae_overhead, "bench", _no_measurement)
    monkeypatch.setattr(vae_overhead, "genjax_results", _no_measurement)
    with pytest.raises(SystemExit) as exit_:
        vae_overhead.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        *TIMING_MISUSE,
        (["--dims", "2,"], "(no empty entries)"),
        (["--dims", "0"], "expected a positive integer, got '0'"),
    ],
)
def test_unnormalized_overhead_misuse_exits_2(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(unnormalized_overhead, "bench", _no_measurement)
    with pytest.raises(SystemExit) as exit_:
        unnormalized_overhead.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mixture", "1000,"], "(no empty entries)"),
        (["--states", "0"], "argument --states: expected a positive integer, got '0'"),
        (["--second-order", "0"], "argument --second-order: expected a positive integer, got '0'"),
        (["--lengths", "x"], "argument --lengths: expected a positive integer, got 'x'"),
        (["--repeats", "0"], "argument --repeats: expected a positive integer, got '0'"),
        (["--runtime-checks", "maybe"], "argument --runtime-checks: invalid choice"),
        (["--json", "/nonexistent-folder/out.json"], "does not exist"),
    ],
)
def test_enumeration_misuse_exits_2(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(enumeration, "bench", _no_measurement)
    with pytest.raises(SystemExit) as exit_:
        enumeration.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_enumeration_agrees_with_hand_written_jax_on_small_sizes(capsys) -> None:
    """A tiny run: every system's value and gradient are asserted equal to hand-written JAX."""
    enumeration.main(
        ["--mixture", "50", "--components", "2", "--lengths", "5", "--states", "2", "--second-order", "2"]
        + ["--repeats", "2"]
    )
    assert "hmm2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
        (["--every", "-5"], "argument --every: expected a positive integer"),
        (["--seeds", "0"], "argument --seeds: expected a positive integer"),
        (["--lr", "inf"], "argument --lr: expected a finite positive number, got 'inf'"),
        (["--lr", "-0.1"], "argument --lr: expected a finite positive number"),
        (["--decay", "1.0"], "argument --decay: expected a number strictly between 0 and 1"),
        (["--warmup", "-1"], "argument --warmup: expected a non-negative integer"),
        (["--rows", ","], "(no empty entries)"),
        (["--rows", "vimco,gumbel"], "unknown row(s) gumbel; choose from reinforce"),
        (["--rows", "reinforce-standard"], "--rows needs at least one trained row"),
        (["--particles", "1"], "--particles must be at least 2 for reinforce+leave-one-out"),
        (["--steps", "300", "--every", "200"], "--steps must be a multiple of --every"),
        (["--grad-samples", "1"], "--grad-samples must be at least 2"),
        (["--json", "/nonexistent-folder/d.json"], "does not exist"),
        (["--figure", "/nonexistent-folder/d.png"], "--figure path"),
    ],
)
def test_discrete_latents_misuse_exits_2(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(discrete_latents.sbn, "load_digits", _no_measurement)
    with pytest.raises(SystemExit) as exit_:
        discrete_latents.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_discrete_latents_writes_nothing_unless_asked() -> None:
    """The committed results (benchmarks/results, docs/_static) are regenerated only explicitly."""
    args = discrete_latents.build_parser().parse_args([])
    assert args.json is None and args.figure is None


def _run(curves: dict[str, list[list[float]]]) -> tuple[dict, dict]:
    results = {n: {"curves": c, "final_full_test": [c[0][-1]]} for n, c in curves.items()}
    timing = {n: {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1, "compile_s": 2.0} for n in curves}
    return results, timing


def test_discrete_latents_summary_when_no_row_reaches_the_target(tmp_path, capsys) -> None:
    args = argparse.Namespace(steps=4, every=2)
    results, timing = _run(
        {
            "reinforce": [[-30.0, -28.0, -27.0]],
            "vimco": [[-30.0, -29.0, -26.5]],
            "numpyro TraceGraph_ELBO": [[-30.0, -26.0, -25.0]],
        }
    )
    summary = discrete_latents.summarize(results, timing, args)
    assert summary["reference"] == "numpyro TraceGraph_ELBO" and summary["best"] is None
    assert summary["table"]["vimco"]["steps_to_target"] is None
    assert summary["table"]["numpyro TraceGraph_ELBO"]["steps_to_target"] == 4.0
    variance = {p: {n: {"all": 1.0, "encoder": 0.5} for n in results} for p in ("init", "trained")}
    discrete_latents.print_tables(summary, timing, variance)
    assert "no estimator of ours reached the target" in capsys.readouterr().out
    path = tmp_path / "d.json"
    T.write_json({"summary": summary}, path)  # JSON-able: None where nothing was reached
    assert json.loads(path.read_text())["summary"]["best_speedup"] is None


def test_discrete_latents_summary_without_numpyro_rows(capsys) -> None:
    args = argparse.Namespace(steps=2, every=2)
    results, timing = _run({"vimco": [[-30.0, -26.5], [-31.0, -27.0]]})
    summary = discrete_latents.summarize(results, timing, args)
    assert summary["reference"] is None and summary["target_bound"] is None and not summary["target_met"]
    assert summary["table"]["vimco"]["final_mean"] == pytest.approx(-26.75)
    variance = {p: {"vimco": {"all": 1.0, "encoder": 0.5}} for p in ("init", "trained")}
    discrete_latents.print_tables(summary, timing, variance)
    assert "no NumPyro row" in capsys.readouterr().out


def test_overhead_non_finite_results_are_null_in_the_json_and_exit_1(tmp_path, monkeypatch) -> None:
    def fake(batch, repeats, rounds, compiles):
        row = {"compile_s": 1.0, "median_ms": 1.0, "p10_ms": 1.0, "p90_ms": 1.0}
        check = dict.fromkeys(("ours_vs_hand_value", "ours_vs_hand_grad"), 0.0)
        check |= dict.fromkeys(("numpyro_vs_hand_value", "numpyro_vs_hand_grad"), 0.0)
        return {
            "batch": batch,
            "hand": row,
            "ours": {**row, "median_ms": float("nan")},
            "numpyro": row,
            "check": check,
        }

    monkeypatch.setattr(overhead, "bench_batch", fake)
    path = tmp_path / "o.json"
    with pytest.raises(SystemExit) as exit_:
        overhead.main(["--batches", "16", "--json", str(path)])
    assert "overhead: non-finite results at [0].ours.median_ms" in str(exit_.value)
    saved = json.loads(path.read_text())
    assert saved["results"][0]["ours"]["median_ms"] is None
    assert saved["nonfinite"] == ["results[0].ours.median_ms"]


@pytest.mark.parametrize(
    "script, argv",
    [
        ("overhead.py", ["--batches", ","]),
        ("vae_overhead.py", ["--objectives", ","]),
        ("unnormalized_overhead.py", ["--repeats", "0"]),
        ("discrete_latents.py", ["--json", "/nonexistent-folder/d.json"]),
    ],
)
def test_misuse_exit_status_from_the_command_line(script, argv) -> None:
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "error: argument" in done.stderr


def test_genjax_peer_rejects_missing_request(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "genjax_peer.py"),
            "--request",
            str(tmp_path / "missing.json"),
            "--out",
            str(tmp_path / "out.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no such file" in done.stderr
