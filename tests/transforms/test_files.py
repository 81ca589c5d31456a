"""Result files: validated before a run, written atomically as strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ppl import transforms as T


def test_write_json_is_strict_and_lists_non_finite_values(tmp_path) -> None:
    path = tmp_path / "out.json"
    T.write_json({"a": 1.5, "b": [math.nan, 2.0], "c": {"d": np.float32(np.inf)}, "e": np.arange(2)}, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    record = json.loads(text)
    assert record == {"a": 1.5, "b": [None, 2.0], "c": {"d": None}, "e": [0, 1], "nonfinite": ["b[0]", "c.d"]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "out.json"
    T.write_json({"ok": 1}, path)
    with pytest.raises(TypeError):
        T.write_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_output_paths_are_checked_before_a_run(tmp_path) -> None:
    assert T.check_output_path(tmp_path / "new.json") == str(tmp_path / "new.json")
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        T.check_output_path(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        T.check_output_path(tmp_path / "no" / "x.json", "--json")
    with pytest.raises(ValueError, match="path is empty"):
        T.check_output_path("")
