"""The README's quickstart (ppl.models.quickstart): a short run, its JSON, and CLI misuse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ppl.models import quickstart


def test_one_row_trains_with_fit() -> None:
    """T.fit moves the family: the untrained ELBO's gap to log p(x) is about 107 nats."""
    row = quickstart.fit("mvd", 60)
    assert -0.05 < row["gap"] < 20.0, row  # an ELBO stays below log p(x), up to noise
    assert row["step_ms"] > 0 and row["grad_std"] > 0


@pytest.mark.slow
def test_short_run_writes_strict_json(tmp_path, capsys) -> None:
    path = tmp_path / "quickstart.json"
    results = quickstart.main(["--steps", "30", "--json", str(path)])
    assert set(results) == set(quickstart.CONFIGS)
    saved = json.loads(path.read_text())
    assert saved["steps"] == 30 and set(saved["results"]) == set(quickstart.CONFIGS)
    for r in results.values():
        assert r["gap"] > -0.05 and r["step_ms"] > 0  # an ELBO is below log p(x), up to noise
    assert "strategy for c" in capsys.readouterr().out


def _no_training(*args, **kwargs):
    raise AssertionError("the CLI started training before rejecting its flags")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
        (["--steps", "many"], "argument --steps: expected a positive integer, got 'many'"),
        (["--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
        (["--json", "/nonexistent-folder/q.json"], "does not exist"),
    ],
)
def test_cli_misuse_exits_2_with_a_message_before_training(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(quickstart, "fit", _no_training)
    with pytest.raises(SystemExit) as exit_:
        quickstart.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_non_finite_results_are_written_as_null_and_exit_1(tmp_path, monkeypatch) -> None:
    row = {"elbo": float("nan"), "gap": float("nan"), "grad_std": 1.0, "step_ms": 0.1, "q(c=1)": 0.5}
    monkeypatch.setattr(quickstart, "fit", lambda name, steps, seed: dict(row))
    path = tmp_path / "q.json"
    with pytest.raises(SystemExit) as exit_:
        quickstart.main(["--steps", "2", "--json", str(path)])
    assert "quickstart: non-finite results at enum.elbo" in str(exit_.value)
    saved = json.loads(path.read_text())
    assert saved["results"]["enum"]["elbo"] is None and "results.enum.elbo" in saved["nonfinite"]


def test_cli_misuse_exit_status_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ppl.models.quickstart", "--steps", "-4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "expected a positive integer" in done.stderr
