"""What the applications' CLIs share: the machine a run was measured on, and flag validation.

Results are written with :func:`ppl.transforms.write_json` (strict JSON, atomic); output paths
are checked with :func:`ppl.transforms.check_output_path` before a run starts. The argparse
types below reject bad flags at parse time (argparse then exits with status 2 and the message);
:func:`check_results` ends a run whose results are empty or not finite with status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from ppl import transforms as T


def git_commit() -> str | None:
    """The checkout's HEAD, or None outside a git checkout."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """The device, versions, CPU counts, OS and git commit a run was measured on."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": str(device),
        "device_kind": getattr(device, "device_kind", None),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


# -- argparse types ------------------------------------------------------------------
def int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, described as ``what`` in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")  # counts, steps, seeds, repeats, batches
nonnegative_int = int_at_least(0, "a non-negative integer")  # seeds, warm-up counts


def float_in(ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse type: a number for which ``ok`` holds, described as ``what`` in the message."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_float = float_in(lambda v: math.isfinite(v) and v > 0, "a finite positive number")  # rates
open_unit_float = float_in(lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")  # decays


def name_list(
    choices: Iterable[str] | None, what: str = "name", plural: str | None = None
) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated, non-empty list of known names, each once.

    ``choices=None`` accepts any non-empty names (check them after parsing when the known
    names depend on other flags). ``plural`` names several in messages (default ``what(s)``).
    """
    known = None if choices is None else tuple(choices)
    among = "" if known is None else f"; choose from {', '.join(known)}"
    plural = plural or f"{what}(s)"

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",")]
        if any(not n for n in names):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} names (no empty entries), got {text!r}{among}"
            )
        unknown = [] if known is None else [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {plural} {', '.join(unknown)}{among}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(f"{plural} named more than once: {', '.join(repeated)}")
        return names

    return parse


def int_list(text: str) -> list[int]:
    """An argparse type: a comma-separated, non-empty list of positive integers (batch sizes)."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of positive integers (no empty entries), got {text!r}"
        )
    return [positive_int(p) for p in parts]


def output_path(what: str) -> Callable[[str], str]:
    """An argparse type: a file path that can be written (checked now, before any run)."""

    def check(text: str) -> str:
        try:
            return T.check_output_path(text, what)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return check


def read_report(
    parser: argparse.ArgumentParser, path: str, format_report: Callable[[dict[str, Any]], str]
) -> tuple[dict[str, Any], str]:
    """``--report PATH``: a benchmark record and its tables, or ``parser.error`` (exit 2) when the
    file cannot be read or is not a record ``format_report`` understands."""
    try:
        with open(path) as f:
            record = json.load(f)
        return record, format_report(record)
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.error(f"--report {path!r}: not a readable benchmark record ({e})")


# -- results -------------------------------------------------------------------------
def nonfinite_paths(obj: Any, path: str = "") -> list[str]:
    """The paths (``a.b[2]``) of the non-finite numbers in a record of dicts, lists and numbers."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{path}[{i}]")]
    if hasattr(obj, "__array__") and not isinstance(obj, str | bytes):
        array = np.asarray(obj)
        if array.dtype.kind in "fc":
            return [] if bool(np.all(np.isfinite(array))) else [path]
        return []
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    return []


def check_results(results: Any, what: str) -> None:
    """End the run (exit status 1, with a message) if ``results`` is empty or has a non-finite number."""
    if results is None or (hasattr(results, "__len__") and len(results) == 0):
        raise SystemExit(f"error: {what}: no results")
    bad = nonfinite_paths(results)
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise SystemExit(f"error: {what}: non-finite results at {listed}")
