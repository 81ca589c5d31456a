"""Benchmark records shared by the applications' CLIs: the machine, strict JSON written atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from typing import Any

import jax
import numpy as np


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


def clean(obj: Any) -> Any:
    """NaN/inf → None so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def write_json(record: dict[str, Any], path: str) -> None:
    """Write ``record`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(clean(record), f, indent=1, default=float)
    os.replace(tmp, path)
