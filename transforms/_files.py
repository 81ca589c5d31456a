"""Files the library writes: validated before a run, written atomically, strict JSON.

Every result or checkpoint goes to a temporary file in the target's folder, is flushed and
fsynced, then renamed over the target (``os.replace``, atomic on POSIX); the temporary file
is removed if anything fails. JSON is strict: non-finite numbers are written as ``null`` and
listed under ``"nonfinite"`` (their paths in the record).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


def check_output_path(path: str | os.PathLike, what: str = "output") -> str:
    """Fail now, not after the run, if ``path`` cannot be written: its folder must exist and
    take a new file, and ``path`` must not be a folder. Returns the path as a string."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what} path is empty")
    if os.path.isdir(path):
        raise ValueError(f"{what} path {path!r} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{what} path {path!r}: the folder {folder!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-", delete=True):
            pass
    except OSError as e:
        raise ValueError(f"{what} path {path!r}: cannot write in {folder!r} ({e.strerror})") from e
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file next to ``path``; on success fsync and rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def strict(obj: Any, path: str = "", found: list[str] | None = None) -> Any:
    """``obj`` as strict-JSON values: NumPy/JAX scalars and arrays to Python, non-finite to ``None``
    (their paths appended to ``found``)."""
    if isinstance(obj, dict):
        return {str(k): strict(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    if hasattr(obj, "__array__") and not isinstance(obj, str | bytes):
        array = np.asarray(obj)
        return strict(array.item() if array.ndim == 0 else array.tolist(), path, found)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if found is not None:
            found.append(path)
        return None
    return obj


def write_json(record: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``record`` as strict JSON, atomically; non-finite numbers become ``null`` and their
    paths are listed under ``"nonfinite"``."""
    found: list[str] = []
    cleaned = strict(record, "", found)
    if found:
        cleaned["nonfinite"] = found
    with atomic_open(path, "w") as f:
        json.dump(cleaned, f, indent=1, allow_nan=False)
        f.write("\n")
