"""The count form of the multi-view evidence: ``C[v, m, s]`` and ``N[v, s]``.

A pixel's predicted 3D-instance distribution depends on the pixel only through the
superpoint it sees, so the per-pixel one-vs-all likelihood of PartSLIP++ reduces
exactly to counts: ``C[v, m, s]``, the pixels of 2D label ``m`` in view ``v`` that
see superpoint ``s``, and ``N[v, s]``, all valid pixels of view ``v`` on ``s``
(labels include the "other" label of valid pixels under no mask). Sizes are padded
to fixed caps so that shapes of one benchmark share one compiled EM.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ppl.models.partseg.types import Masks, Views


@dataclasses.dataclass
class Counts:
    """``counts`` ``(V, M, S)`` float32 and ``totals`` ``(V, S)`` float32, padded;
    ``label_valid`` ``(V, M)`` bool marks real labels (the "other" label included),
    ``superpoint_valid`` ``(S,)`` bool the real superpoints."""

    counts: np.ndarray
    totals: np.ndarray
    label_valid: np.ndarray
    superpoint_valid: np.ndarray


def count_evidence(
    views: Views,
    masks: Masks,
    superpoints: np.ndarray,
    max_labels: int | None = None,
    max_superpoints: int | None = None,
) -> Counts:
    """Count the label map by superpoint; see the module docstring.

    ``max_labels``/``max_superpoints`` are the padded sizes (default: the
    largest label count over the views, the superpoint count).
    """
    pixel_point, label_map = views.pixel_point, masks.label_map
    if pixel_point.shape != label_map.shape:
        raise ValueError(
            f"views have shape {pixel_point.shape} but the label map has shape {label_map.shape}: "
            "masks must be rendered at the views' resolution"
        )
    if np.any((label_map >= 0) & (pixel_point < 0)):
        v = int(np.argwhere((label_map >= 0) & (pixel_point < 0))[0, 0])
        raise ValueError(f"view {v}: the label map labels pixels where the view sees no point")
    if pixel_point.max() >= superpoints.shape[0]:
        raise ValueError(
            f"views reference point {int(pixel_point.max())}, but there are {superpoints.shape[0]} points"
        )
    num_views = pixel_point.shape[0]
    labels_per_view = [m.shape[0] + 1 for m in masks.masks]  # + "other"
    num_superpoints = int(superpoints.max()) + 1
    m_pad = max_labels or max(labels_per_view)
    s_pad = max_superpoints or num_superpoints
    if max(labels_per_view) > m_pad or num_superpoints > s_pad:
        raise ValueError(
            f"{max(labels_per_view)} labels and {num_superpoints} superpoints do not fit the padded "
            f"sizes ({m_pad}, {s_pad})"
        )
    counts = np.zeros((num_views, m_pad, s_pad), np.float32)
    totals = np.zeros((num_views, s_pad), np.float32)
    label_valid = np.zeros((num_views, m_pad), bool)
    for v in range(num_views):
        seen = pixel_point[v] >= 0
        sp = superpoints[pixel_point[v][seen]]
        label = label_map[v][seen]
        np.add.at(counts[v], (label, sp), 1.0)
        totals[v] = np.bincount(sp, minlength=s_pad)
        label_valid[v, : labels_per_view[v]] = True
    superpoint_valid = np.arange(s_pad) < num_superpoints
    return Counts(counts, totals, label_valid, superpoint_valid)
