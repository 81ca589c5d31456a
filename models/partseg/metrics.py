"""Part-segmentation metrics: semantic mIoU, PartNet-style instance AP50, superpoint purity, and the
ground-truth upper bound that the superpoints allow. All results are percentages.

* :func:`semantic_iou` / :func:`mean_iou`: point IoU per part class with unlabeled ground-truth
  points (−1) excluded from both sides. A class enters a shape's score when it is present in the
  ground truth or the prediction (on labeled points). Over a set, each class's IoU is averaged over
  the shapes where it entered, then the classes are averaged (PartSLIP's ``semantic_eval.py``
  aggregation: per class first).
* :func:`ap50`: PartNet's ``eval_per_class_ap``, accumulated per part class over a *set* of shapes.
  Within each shape the predictions of a class are visited by decreasing score; each is matched to
  the unmatched ground-truth instance of its class with the highest point IoU, and is a true
  positive if that IoU exceeds the threshold (PartNet's strict ``>``; IoU exactly 0.5 is not a hit).
  Points whose ground truth is unlabeled are removed from the prediction before the IoU, as
  PartNet does with its "other" points. The pooled hits are re-sorted by score, and
  AP = mean over the 101 recall levels ``t ∈ {0, 0.01, …, 1}`` of the largest precision reached at
  recall ≥ ``t`` (0 if never reached). PartNet also prepends a (recall 0, precision 1) point, which
  adds 1/101 to every class with a prediction even when all are wrong; ``partnet_sentinel=True``
  restores it, the default leaves it out (COCO's convention) so that all-wrong scores 0. A class with
  ground truth but no prediction scores 0; classes with no ground-truth instance in the whole set
  are skipped (NaN); mAP50 averages the rest.
* :func:`superpoint_purity`: the generator's :func:`~ppl.models.partseg.superpoints.purity` in
  percent: the fraction of points whose superpoint's majority ground-truth instance is their own
  (unlabeled −1 counts as one more label).
* :func:`upper_bound`: each superpoint takes its majority ground-truth instance, each instance its
  ground-truth class, score 1: the best labeling any grouping of these superpoints can output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ppl.models.partseg.postprocess import Instances
from ppl.models.partseg.superpoints import majority, purity
from ppl.models.partseg.types import Shape


def semantic_iou(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C,)`` point IoU (%) per class for one shape, NaN for classes absent from both."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has shape {gt.shape} but prediction has shape {pred.shape}")
    labeled = gt >= 0
    g, p = gt[labeled], pred[labeled]
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        union = np.sum((g == c) | (p == c))
        if union:
            out[c] = 100.0 * np.sum((g == c) & (p == c)) / union
    return out


def mean_iou(
    shapes: Sequence[Shape], preds: Sequence[Instances], num_classes: int
) -> tuple[float, np.ndarray]:
    """Set mIoU (%) and ``(C,)`` per-class IoU (NaN: class never present)."""
    _check_set(shapes, preds)
    per_shape = np.array(
        [semantic_iou(s.semantic, p.point_semantic(), num_classes) for s, p in zip(shapes, preds)]
    ).reshape(-1, num_classes)
    present = ~np.isnan(per_shape)
    per_class = np.where(present.any(0), np.nansum(per_shape, 0) / np.maximum(present.sum(0), 1), np.nan)
    return (float(np.nanmean(per_class)) if present.any() else float("nan")), per_class


def _check_set(shapes: Sequence[Shape], preds: Sequence[Instances]) -> None:
    if len(shapes) != len(preds):
        raise ValueError(f"{len(shapes)} shapes but {len(preds)} predictions")
    for i, (s, p) in enumerate(zip(shapes, preds)):
        if p.point_instance.shape != s.instance.shape:
            raise ValueError(
                f"shape {i}: {s.instance.shape[0]} points but prediction has shape {p.point_instance.shape}"
            )
        if p.semantic.shape != p.score.shape or (p.point_instance.max(initial=-1) >= p.num_instances):
            raise ValueError(f"shape {i}: prediction ids exceed its {p.num_instances} instances")


def match_shape(
    shape: Shape, pred: Instances, num_classes: int, iou_threshold: float = 0.5
) -> tuple[list[list[tuple[float, bool]]], np.ndarray]:
    """PartNet's greedy matching on one shape: per class a list of ``(score, is_tp)`` and the
    ``(C,)`` number of ground-truth instances."""
    gt_sem = shape.instance_semantic()
    other = shape.semantic < 0
    n_gt = np.array([np.sum(gt_sem == c) for c in range(num_classes)])
    gt_masks = [shape.instance == i for i in range(gt_sem.shape[0])]
    used = np.zeros(gt_sem.shape[0], bool)
    hits: list[list[tuple[float, bool]]] = [[] for _ in range(num_classes)]
    for idx in np.argsort(-pred.score, kind="stable"):
        c = int(pred.semantic[idx])
        if not 0 <= c < num_classes:
            continue
        mask = (pred.point_instance == idx) & ~other
        best, best_j = 0.0, -1
        for j in np.flatnonzero((gt_sem == c) & ~used):
            iou = np.sum(gt_masks[j] & mask) / np.sum(gt_masks[j] | mask)
            if iou > best:
                best, best_j = iou, j
        tp = best > iou_threshold
        if tp:
            used[best_j] = True
        hits[c].append((float(pred.score[idx]), bool(tp)))
    return hits, n_gt


def average_precision(tp: np.ndarray, num_gt: int, partnet_sentinel: bool = False) -> float:
    """101-point interpolated AP (%) of hits ``tp`` sorted by decreasing score (module docstring)."""
    if num_gt <= 0:
        raise ValueError("average precision needs at least one ground-truth instance")
    tp = np.asarray(tp, bool)
    ctp = np.cumsum(tp)
    rec = ctp / num_gt
    prec = ctp / np.arange(1, tp.size + 1)
    if partnet_sentinel:
        rec, prec = np.append(0.0, rec), np.append(1.0, prec)
    levels = np.linspace(0.0, 1.0, 101)
    interp = [prec[rec >= t - 1e-12].max() if np.any(rec >= t - 1e-12) else 0.0 for t in levels]
    return 100.0 * float(np.mean(interp))


def ap50(
    shapes: Sequence[Shape],
    preds: Sequence[Instances],
    num_classes: int,
    iou_threshold: float = 0.5,
    partnet_sentinel: bool = False,
) -> tuple[float, np.ndarray]:
    """Set mAP (%) at ``iou_threshold`` and ``(C,)`` per-class AP (NaN: no ground truth)."""
    _check_set(shapes, preds)
    pooled: list[list[tuple[float, bool]]] = [[] for _ in range(num_classes)]
    n_gt = np.zeros(num_classes, np.int64)
    for shape, pred in zip(shapes, preds):
        hits, n = match_shape(shape, pred, num_classes, iou_threshold)
        n_gt += n
        for c in range(num_classes):
            pooled[c] += hits[c]
    aps = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if n_gt[c] == 0:
            continue
        if not pooled[c]:
            aps[c] = 0.0
            continue
        score = np.array([h[0] for h in pooled[c]])
        tp = np.array([h[1] for h in pooled[c]])
        aps[c] = average_precision(tp[np.argsort(-score, kind="stable")], int(n_gt[c]), partnet_sentinel)
    return (float(np.nanmean(aps)) if np.any(n_gt) else float("nan")), aps


def superpoint_purity(superpoints: np.ndarray, instance: np.ndarray) -> float:
    """Point-weighted purity (%) of the superpoints w.r.t. the ground-truth instances
    (:func:`ppl.models.partseg.superpoints.purity`, as a percentage)."""
    if superpoints.shape != instance.shape:
        raise ValueError(f"superpoints {superpoints.shape} and labels {instance.shape} do not match")
    return 100.0 * purity(superpoints, instance) if instance.size else float("nan")


def upper_bound(shape: Shape, superpoints: np.ndarray) -> Instances:
    """The best instances the superpoints allow (see the module docstring)."""
    major = majority(superpoints, shape.instance)
    point_instance = major[superpoints]
    gt_sem = shape.instance_semantic()
    point_instance = np.where(
        (point_instance >= 0) & (gt_sem[np.maximum(point_instance, 0)] >= 0), point_instance, -1
    )
    ids = np.unique(point_instance[point_instance >= 0])
    lut = np.full(shape.num_instances + 1, -1, np.int32)
    lut[ids] = np.arange(ids.size)
    out = np.where(point_instance >= 0, lut[np.maximum(point_instance, 0)], -1).astype(np.int32)
    return Instances(out, gt_sem[ids].astype(np.int32), np.ones(ids.size, np.float32))


def evaluate(
    shapes: Sequence[Shape], preds: Sequence[Instances], num_classes: int
) -> dict[str, float | list[float]]:
    """``{"mIoU", "AP50", "IoU_per_class", "AP50_per_class"}`` (%) over a set of one category."""
    miou, ious = mean_iou(shapes, preds, num_classes)
    map50, aps = ap50(shapes, preds, num_classes)
    return {"mIoU": miou, "AP50": map50, "IoU_per_class": ious.tolist(), "AP50_per_class": aps.tolist()}
