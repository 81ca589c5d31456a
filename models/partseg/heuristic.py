"""The PartSLIP grouping heuristic: 2D masks → 3D instances by coverage votes and union-find.

PartSLIP (Liu et al., CVPR 2023, ``src/bbox2seg.py``) lifts per-view detections to 3D by
superpoint votes; PartSLIP++ starts its EM from that result. Here it runs on exactly the EM's
inputs (points, superpoints, views, masks), with SAM-like masks in place of GLIP boxes:

1. Coverage (:func:`coverage`): for superpoint ``s`` and mask ``j = (v, m)``,
   ``R[s, j]`` = fraction of ``s``'s visible pixels in view ``v`` inside the boolean mask
   ``masks[v][m]`` (NaN when ``s`` is not visible in ``v``). Overlapping masks both count.
2. Assignment (:func:`assign`): masks are visited small-to-large (pixel area; "small parts
   first") and a superpoint takes the first mask with ``R > 0.5``, i.e. the smallest mask covering
   it. Superpoints covered by no mask get −1 and stay out of every instance. Thresholds are strict
   (PartSLIP uses ≥ 0.5; the difference is a measure-zero tie).
3. Merge (:func:`heuristic_instances`): union-find over adjacent assigned superpoints whose coverage
   vectors differ by less than ``merge`` (0.2). Adjacency (:func:`superpoint_adjacency`): some
   point's ``k`` (8) nearest neighbours include a point of the other superpoint. The distance is
   PartSLIP's normalized L1 (:func:`coverage_distance`): over the masks of the views where both
   superpoints are visible, ``Σ|R_s − R_t| / max(Σ R_s, Σ R_t)`` (1 when they share no view or
   neither is covered).

Choices where the reference is vague:

* The assignment gates which superpoints take part; it does not group them by itself. Also joining
  the superpoints assigned to one mask (``group_by_mask=True``) is available but off: a small
  false-positive blob or a merged mask is then the smallest cover of superpoints of two parts and
  fuses them (on 10 noisy generated chairs AP50 fell from about 90 to 73; storage gained a little).
  PartSLIP itself merges by coverage similarity only.
* PartSLIP compares the in-box ratios of one part class's boxes and merges within a semantic label;
  masks here are class-agnostic instance evidence, so the vectors run over all masks and the class
  is decided afterwards by the shared vote (:mod:`ppl.models.partseg.postprocess`); gating merges by
  the assigned masks' classes lost AP (a flipped class splits a part).
* PartSLIP's merge threshold is 0.1 on boxes; 0.2 (the reconstruction's value) is the default.
  PartSLIP's extra condition that merged superpoints differ in size by less than 100× is dropped.
* Union-find is computed as connected components of the merge graph (the same partition).
"""

from __future__ import annotations

import numpy as np
from ppl.models.partseg.postprocess import check_inputs, mask_counts, relabel
from ppl.models.partseg.types import Masks, Views
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _num_superpoints(superpoints: np.ndarray, num_superpoints: int | None) -> int:
    if superpoints.ndim != 1:
        raise ValueError(f"superpoints must be (P,), got shape {superpoints.shape}")
    if superpoints.size and superpoints.min() < 0:
        raise ValueError("superpoint ids must be ≥ 0")
    found = int(superpoints.max()) + 1 if superpoints.size else 0
    if num_superpoints is not None and found > num_superpoints:
        raise ValueError(f"superpoint ids reach {found - 1} but num_superpoints={num_superpoints}")
    return found if num_superpoints is None else num_superpoints


def coverage(
    superpoints: np.ndarray, views: Views, masks: Masks, num_superpoints: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``R`` ``(S, J)`` (NaN: not visible in the mask's view) over all masks ``j`` in view order,
    and their pixel areas ``(J,)``."""
    s = _num_superpoints(superpoints, num_superpoints)
    check_inputs(superpoints.shape[0], views, masks)
    totals, inside = mask_counts(superpoints, s, views, masks)
    cols = []
    for v, c in enumerate(inside):
        seen = totals[v] > 0
        cols.append(np.where(seen[None, :], c / np.maximum(totals[v], 1)[None, :], np.nan))
    r = np.concatenate(cols, 0).T if cols else np.zeros((s, 0))
    area = np.concatenate([m.sum((1, 2)) for m in masks.masks]) if cols else np.zeros(0)
    return r.reshape(s, -1), area.astype(np.int64)


def assign(r: np.ndarray, area: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(S,)`` the smallest mask (column of ``r``) covering each superpoint by more than
    ``threshold``, −1 for none."""
    order = np.argsort(area, kind="stable")
    covers = np.nan_to_num(r[:, order], nan=0.0) > threshold
    first = covers.argmax(1)
    return np.where(covers.any(1), order[first], -1).astype(np.int64)


def superpoint_adjacency(points: np.ndarray, superpoints: np.ndarray, k: int = 8) -> np.ndarray:
    """``(E, 2)`` unique pairs ``s < t`` of adjacent superpoints (kNN graph on the points)."""
    if points.shape[0] != superpoints.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {superpoints.shape[0]} superpoint labels")
    kk = min(k + 1, points.shape[0])
    if kk < 2:
        return np.zeros((0, 2), np.int64)
    _, nbr = cKDTree(points).query(points, k=kk)
    a = np.repeat(superpoints, kk - 1)
    b = superpoints[nbr[:, 1:].ravel()]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], 1)[a != b]
    return np.unique(pairs, axis=0).astype(np.int64).reshape(-1, 2)


def coverage_distance(r: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """PartSLIP's normalized L1 between the coverage vectors of each pair (see module docstring)."""
    a, b = r[pairs[:, 0]], r[pairs[:, 1]]
    both = ~np.isnan(a) & ~np.isnan(b)
    a, b = np.where(both, a, 0.0), np.where(both, b, 0.0)
    den = np.maximum(a.sum(1), b.sum(1))
    dist = np.abs(a - b).sum(1) / np.maximum(den, 1e-12)
    return np.where(den < 1e-3, 1.0, dist)


def heuristic_instances(
    points: np.ndarray,
    superpoints: np.ndarray,
    views: Views,
    masks: Masks,
    *,
    num_superpoints: int | None = None,
    cover: float = 0.5,
    merge: float = 0.2,
    k: int = 8,
    group_by_mask: bool = False,
) -> np.ndarray:
    """``(S,)`` int32 3D instance id per superpoint (``0..K-1``), −1 for superpoints no mask covers."""
    if points.ndim != 2 or points.shape[0] != superpoints.shape[0]:
        raise ValueError(f"points {points.shape} and superpoints {superpoints.shape} do not match")
    s = _num_superpoints(superpoints, num_superpoints)
    r, area = coverage(superpoints, views, masks, s)
    assigned = assign(r, area, cover)
    pairs = superpoint_adjacency(points, superpoints, k)
    ok = (assigned[pairs[:, 0]] >= 0) & (assigned[pairs[:, 1]] >= 0)
    pairs = pairs[ok]
    edges = [pairs[coverage_distance(r, pairs) < merge]]
    if group_by_mask:  # chain the superpoints of each mask: s_1 – s_2 – … – s_n
        idx = np.flatnonzero(assigned >= 0)
        idx = idx[np.argsort(assigned[idx], kind="stable")]
        same = assigned[idx[1:]] == assigned[idx[:-1]]
        edges.append(np.stack([idx[:-1][same], idx[1:][same]], 1))
    e = np.concatenate(edges, 0)
    graph = coo_matrix((np.ones(e.shape[0], bool), (e[:, 0], e[:, 1])), shape=(s, s))
    _, comp = connected_components(graph, directed=False)
    return relabel(np.where(assigned >= 0, comp, -1))


def to_points(labels: np.ndarray, superpoints: np.ndarray) -> np.ndarray:
    """Per-superpoint labels ``(S,)`` → per-point labels ``(P,)``."""
    if superpoints.size and superpoints.max() >= labels.shape[0]:
        raise ValueError(f"superpoint ids reach {int(superpoints.max())} but only {labels.shape[0]} labels")
    return labels[superpoints].astype(np.int32)
