"""The post-processing shared by every grouping method (PartSLIP heuristic, EM, ground truth).

It turns raw 3D instances (an id per superpoint or per point) into scored, labeled part
instances, identically for every method so that AP50/mIoU differences come from the grouping:

(a) spatial split (:func:`spatial_split`): each instance is cut into the connected components of
    its points under a radius graph, ``radius = max(rel_gap · diagonal, floor · d₈)`` (``diagonal``
    of the shape's bounding box, default ``rel_gap`` 0.03; ``d₈`` the median distance to the 8th
    nearest point, ``floor`` 1.5, so that a random sampling of one surface stays connected: a
    radius of 0.02 · diagonal shattered generated parts). Components of fewer than ``min_points``
    (3) points are dropped (set to −1); at 4000 points a generated handle has only 4–10 points, so
    a larger cut would delete every handle. PartSLIP++ splits by superpoint bounding-box adjacency
    (threshold 0.05); a point radius graph is the same idea at point resolution.
(b) semantic label by vote (:func:`vote`): 2D mask ``(v, m)`` gives its ``mask_class`` as many votes
    as it covers pixels of the instance in view ``v``; the instance takes the class with most votes
    (an instance no mask touches gets −1 and is dropped). PartSLIP++ takes the majority semantic of
    PartSLIP's result; voting with the masks needs no second method.
(c) box filter (:func:`box_filter`, PartSLIP/PartSLIP++): keep an instance only if, in some view,
    the pixel bounding box of its visible pixels overlaps the pixel bounding box of a mask of its
    class with IoU > ``box_iou`` (0.5). Boxes are inclusive pixel boxes; the original compares
    projected point coordinates with GLIP's boxes, here the masks stand in for the detections.
(d) confidence (:func:`vote`): the fraction of the instance's visible pixels (all views pooled)
    that lie under some mask of its voted class. PartSLIP++ scores every instance 1.0, which makes
    AP depend on file order; this score ranks well-supported instances first.

Output: :class:`Instances`, ids renumbered ``0..K-1`` in order of first appearance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ppl.models.partseg.types import Masks, Views
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclasses.dataclass
class Instances:
    """Predicted part instances of one shape: ``point_instance`` ``(P,)`` int32 in ``[0, K)``
    (−1: no instance); ``semantic`` ``(K,)`` int32 part class; ``score`` ``(K,)`` float32."""

    point_instance: np.ndarray
    semantic: np.ndarray
    score: np.ndarray

    @property
    def num_instances(self) -> int:
        return int(self.semantic.shape[0])

    def point_semantic(self) -> np.ndarray:
        """``(P,)`` the part class of each point's instance, −1 for no instance."""
        sem = np.append(self.semantic, -1).astype(np.int32)
        return sem[self.point_instance]


def check_inputs(num_points: int, views: Views, masks: Masks, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` when views, masks and the point count do not fit together."""
    pp = views.pixel_point
    if pp.ndim != 3:
        raise ValueError(f"pixel_point must be (V, H, W), got shape {pp.shape}")
    if len(masks.masks) != pp.shape[0] or len(masks.mask_class) != pp.shape[0]:
        raise ValueError(
            f"{pp.shape[0]} views but {len(masks.masks)} mask stacks and {len(masks.mask_class)} class lists"
        )
    if pp.size and (pp.max() >= num_points or pp.min() < -1):
        raise ValueError(f"pixel_point holds point ids outside [-1, {num_points}) for {num_points} points")
    for v, (mv, cv) in enumerate(zip(masks.masks, masks.mask_class)):
        if mv.ndim != 3 or mv.shape[1:] != pp.shape[1:]:
            raise ValueError(
                f"view {v}: masks have shape {mv.shape}, expected (M, {pp.shape[1]}, {pp.shape[2]})"
            )
        if cv.shape != (mv.shape[0],):
            raise ValueError(f"view {v}: {mv.shape[0]} masks but mask_class has shape {cv.shape}")
        if num_classes is not None and cv.size and (cv.min() < 0 or cv.max() >= num_classes):
            raise ValueError(f"view {v}: mask classes must lie in [0, {num_classes}), got {cv}")


def pixel_labels(labels: np.ndarray, views: Views) -> np.ndarray:
    """``(V, H, W)``: the label of the point seen at each pixel, −1 for background/unlabeled."""
    pp = views.pixel_point
    return np.where(pp >= 0, np.append(labels, -1)[pp], -1).astype(np.int64)


def mask_counts(
    labels: np.ndarray, num_labels: int, views: Views, masks: Masks
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pixel counts by point label: ``N`` ``(V, L)`` visible pixels of label ``l`` in view ``v``,
    and ``C[v]`` ``(M_v, L)`` those of them inside mask ``m`` (the boolean masks, overlaps kept)."""
    pix = pixel_labels(labels, views)
    totals = np.zeros((pix.shape[0], num_labels), np.float64)
    inside = []
    for v in range(pix.shape[0]):
        flat = pix[v].ravel()
        seen = flat >= 0
        totals[v] = np.bincount(flat[seen], minlength=num_labels)
        mv = masks.masks[v].reshape(masks.masks[v].shape[0], flat.size)
        inside.append(
            np.array([np.bincount(flat[m & seen], minlength=num_labels) for m in mv], np.float64).reshape(
                -1, num_labels
            )
        )
    return totals, inside


def relabel(point_instance: np.ndarray) -> np.ndarray:
    """Renumber the ids ≥ 0 to ``0..K-1`` in order of first appearance; negative ids become −1."""
    seen = point_instance >= 0
    if not seen.any():
        return np.full(point_instance.shape, -1, np.int32)
    ids, first = np.unique(point_instance[seen], return_index=True)
    lut = np.zeros(int(ids.max()) + 1, np.int32)
    lut[ids[np.argsort(first)]] = np.arange(ids.size, dtype=np.int32)
    return np.where(seen, lut[np.maximum(point_instance, 0)], -1).astype(np.int32)


def spatial_split(
    points: np.ndarray,
    point_instance: np.ndarray,
    rel_gap: float = 0.03,
    min_points: int = 3,
    floor: float = 1.5,
) -> np.ndarray:
    """Step (a): connected components of each instance's points (see the module docstring)."""
    if points.shape[0] != point_instance.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {point_instance.shape[0]} instance labels")
    tree = cKDTree(points)
    kk = min(9, points.shape[0])
    spacing = float(np.median(tree.query(points, k=kk)[0][:, -1])) if kk > 1 else 0.0
    diagonal = float(np.linalg.norm(points.max(0) - points.min(0))) if points.shape[0] else 0.0
    radius = max(rel_gap * diagonal, floor * spacing)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    same = (point_instance[pairs[:, 0]] == point_instance[pairs[:, 1]]) & (point_instance[pairs[:, 0]] >= 0)
    i, j = pairs[same, 0], pairs[same, 1]
    n = points.shape[0]
    graph = coo_matrix((np.ones(i.size, bool), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    comp = np.where(point_instance >= 0, comp, -1)
    sizes = np.bincount(comp[comp >= 0], minlength=n)
    comp = np.where((comp >= 0) & (sizes[np.maximum(comp, 0)] >= min_points), comp, -1)
    return relabel(comp)


def vote(
    point_instance: np.ndarray, views: Views, masks: Masks, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps (b) and (d): ``(semantic (K,), score (K,), votes (K, C))`` for ids ``0..K-1``."""
    k = int(point_instance.max()) + 1 if point_instance.size else 0
    totals, inside = mask_counts(point_instance, k, views, masks)
    votes = np.zeros((k, num_classes))
    covered = np.zeros((k, num_classes))  # visible pixels under the union of class-c masks
    pix = pixel_labels(point_instance, views)
    for v, (cv, mv) in enumerate(zip(masks.mask_class, masks.masks)):
        np.add.at(votes.T, cv, inside[v])
        flat = pix[v].ravel()
        for c in np.unique(cv):
            union = mv[cv == c].any(0).ravel() & (flat >= 0)
            covered[:, c] += np.bincount(flat[union], minlength=k)
    semantic = np.where(votes.sum(1) > 0, votes.argmax(1), -1).astype(np.int32)
    seen = totals.sum(0)
    score = np.where(semantic >= 0, covered[np.arange(k), np.maximum(semantic, 0)] / np.maximum(seen, 1), 0.0)
    return semantic, score.astype(np.float32), votes


def _boxes(labels: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive pixel boxes ``(L, 4)`` = (row0, col0, row1, col1) of each label in an ``(H, W)``
    label image, and whether the label is present."""
    rows, cols = np.nonzero(labels >= 0)
    lab = labels[rows, cols]
    box = np.zeros((num_labels, 4), np.int64)
    box[:, :2] = np.iinfo(np.int64).max
    box[:, 2:] = -1
    np.minimum.at(box[:, 0], lab, rows)
    np.minimum.at(box[:, 1], lab, cols)
    np.maximum.at(box[:, 2], lab, rows)
    np.maximum.at(box[:, 3], lab, cols)
    return box, box[:, 2] >= 0


def _mask_boxes(mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive pixel boxes ``(M, 4)`` of boolean masks ``(M, H, W)`` and whether each is non-empty."""
    rows, cols = mv.any(2), mv.any(1)
    h, w = mv.shape[1:]
    box = np.stack(
        [rows.argmax(1), cols.argmax(1), h - 1 - rows[:, ::-1].argmax(1), w - 1 - cols[:, ::-1].argmax(1)], 1
    )
    return box, rows.any(1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of inclusive pixel boxes ``a`` ``(A, 4)`` and ``b`` ``(B, 4)``: ``(A, B)``."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo + 1, 0, None), -1)
    area_a = np.prod(a[:, 2:] - a[:, :2] + 1, -1)
    area_b = np.prod(b[:, 2:] - b[:, :2] + 1, -1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1)


def box_filter(
    point_instance: np.ndarray, semantic: np.ndarray, views: Views, masks: Masks, threshold: float = 0.5
) -> np.ndarray:
    """Step (c): ``(K,)`` bool, an instance's box matches a same-class mask box in some view."""
    k = semantic.shape[0]
    keep = np.zeros(k, bool)
    pix = pixel_labels(point_instance, views)
    for v, (cv, mv) in enumerate(zip(masks.mask_class, masks.masks)):
        if mv.shape[0] == 0:
            continue
        inst_box, present = _boxes(pix[v], k)
        mask_box, nonempty = _mask_boxes(mv)
        iou = box_iou(inst_box, mask_box)
        same = (semantic[:, None] == cv[None, :]) & nonempty[None, :] & present[:, None]
        keep |= ((iou > threshold) & same).any(1)
    return keep


def postprocess(
    points: np.ndarray,
    views: Views,
    masks: Masks,
    instance: np.ndarray,
    num_classes: int,
    superpoints: np.ndarray | None = None,
    *,
    rel_gap: float = 0.03,
    min_points: int = 3,
    floor: float = 1.5,
    box_threshold: float = 0.5,
) -> Instances:
    """Steps (a)–(d) on ``instance``: per point ``(P,)``, or per superpoint ``(S,)`` when
    ``superpoints`` ``(P,)`` is given; ids < 0 mean "no instance"."""
    num_points = points.shape[0]
    if superpoints is not None:
        if superpoints.shape != (num_points,):
            raise ValueError(f"{num_points} points but superpoints has shape {superpoints.shape}")
        if superpoints.size and superpoints.max() >= instance.shape[0]:
            raise ValueError(
                f"superpoint ids reach {int(superpoints.max())} but only {instance.shape[0]} labels"
            )
        instance = instance[superpoints]
    if instance.shape != (num_points,):
        raise ValueError(f"{num_points} points but instance labels have shape {instance.shape}")
    check_inputs(num_points, views, masks, num_classes)
    split = spatial_split(points, np.where(instance >= 0, instance, -1), rel_gap, min_points, floor)
    semantic, score, _ = vote(split, views, masks, num_classes)
    keep = (semantic >= 0) & box_filter(split, semantic, views, masks, box_threshold)
    kept = np.append(np.where(keep, np.arange(keep.size), -1), -1)[split]
    final = relabel(kept)
    old = np.full(int(final.max()) + 1 if final.size else 0, -1, np.int64)
    old[final[final >= 0]] = kept[final >= 0]
    return Instances(final, semantic[old].astype(np.int32), score[old].astype(np.float32))
