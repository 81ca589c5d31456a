"""Metrics: AP50 (PartNet style, pooled over shapes), mIoU, purity and the superpoint upper bound."""

from __future__ import annotations

import numpy as np
import pytest
from ppl.models.partseg import metrics
from ppl.models.partseg.postprocess import Instances
from ppl.models.partseg.types import Shape


def make_shape(instance, semantic_of_instance):
    """A shape from per-point instance ids (−1: unlabeled) and each instance's class."""
    instance = np.asarray(instance, np.int32)
    sem = np.append(np.asarray(semantic_of_instance, np.int32), -1)[instance]
    p = instance.shape[0]
    z = np.zeros((p, 3), np.float32)
    return Shape("chair", z, z, z, sem.astype(np.int32), instance, seed=0)


def pred(point_instance, semantic, score):
    return Instances(
        np.asarray(point_instance, np.int32), np.asarray(semantic, np.int32), np.asarray(score, np.float32)
    )


# Ten points: GT instance 0 (class 0) on 0..3, instance 1 (class 0) on 4..7, 8..9 unlabeled.
GT = make_shape([0, 0, 0, 0, 1, 1, 1, 1, -1, -1], [0, 0])


def test_perfect_prediction_scores_100() -> None:
    shape = make_shape([0, 0, 1, 1, 2, 2, 2, 3], [0, 1, 1, 2])
    perfect = pred(shape.instance, shape.instance_semantic(), [1, 1, 1, 1])
    result = metrics.evaluate([shape], [perfect], 4)
    assert result["AP50"] == pytest.approx(100.0) and result["mIoU"] == pytest.approx(100.0)
    assert np.isnan(result["AP50_per_class"][3])  # no GT instance of class 3: skipped


def test_all_wrong_scores_0() -> None:
    wrong_class = pred(GT.instance, [1, 1], [1, 1])
    too_small = pred([0, -1, -1, -1, 1, -1, -1, -1, -1, -1], [0, 0], [0.9, 0.8])
    for p in (wrong_class, too_small):
        assert metrics.ap50([GT], [p], 2)[0] == pytest.approx(0.0)
    # PartNet's (recall 0, precision 1) sentinel gives 1/101 even then.
    assert metrics.ap50([GT], [too_small], 2, partnet_sentinel=True)[0] == pytest.approx(100 / 101)


def test_one_false_positive_and_one_miss_by_hand() -> None:
    # P0 = GT 0 exactly (TP); P1 = one point of GT 1 plus the unlabeled points: IoU 1/4 (FP); GT 1 missed.
    ids = np.array([0, 0, 0, 0, -1, -1, -1, 1, 1, 1])
    # TP first: precision 1 up to recall 0.5, nothing beyond: 51 of 101 levels.
    assert metrics.ap50([GT], [pred(ids, [0, 0], [0.9, 0.8])], 1)[0] == pytest.approx(100 * 51 / 101)
    # FP first: precision 0.5 up to recall 0.5.
    assert metrics.ap50([GT], [pred(ids, [0, 0], [0.7, 0.8])], 1)[0] == pytest.approx(100 * 25.5 / 101)
    assert metrics.ap50([GT], [pred(ids, [0, 0], [0.7, 0.8])], 1, partnet_sentinel=True)[0] == pytest.approx(
        100 * 26 / 101
    )


def test_unlabeled_points_do_not_count_and_iou_half_is_not_a_hit() -> None:
    # GT 1 plus both unlabeled points: IoU 1 after removing them.
    ids = np.array([-1, -1, -1, -1, 0, 0, 0, 0, 0, 0])
    assert metrics.ap50([GT], [pred(ids, [0], [1])], 1)[1][0] == pytest.approx(100 * 51 / 101)
    half = np.array([0, 0, -1, -1, -1, -1, -1, -1, -1, -1])  # IoU exactly 0.5 with GT 0
    assert metrics.ap50([GT], [pred(half, [0], [1])], 1)[0] == 0.0


def test_ap_pools_predictions_across_shapes() -> None:
    a = make_shape([0, 0, 0, 1, 1, 1], [0, 1])
    b = make_shape([0, 0, 0, 0, 0, 0], [1])
    pa = pred(a.instance, [0, 1], [0.9, 0.9])
    pb = pred([0, 0, 0, 0, 0, 0], [0], [0.95])  # a class-0 false positive ranked above a's hit
    _, aps = metrics.ap50([a, b], [pa, pb], 2)
    # class 0: FP then TP, 1 GT: precision 0.5 at recall 1. class 1: b's GT missed, recall 0.5.
    np.testing.assert_allclose(aps, [50.0, 100 * 51 / 101])


def test_miou_by_hand() -> None:
    shape = make_shape([0, 0, 0, 0, 1, 1, -1, -1], [0, 1])
    # Points 0..5 labeled: class 0 I=3, U=4; class 1 I=2, U=3; class 2 only on unlabeled points.
    p = pred([0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 2], [1, 1, 1])
    ious = metrics.semantic_iou(shape.semantic, p.point_semantic(), 3)
    np.testing.assert_allclose(ious[:2], [75.0, 200 / 3])
    assert np.isnan(ious[2])
    miou, _ = metrics.mean_iou([shape, shape], [p, p], 3)
    assert miou == pytest.approx((75 + 200 / 3) / 2)


def test_purity_and_upper_bound() -> None:
    shape = make_shape([0, 0, 0, 1, 1, 1, -1, -1], [0, 1])
    superpoints = np.array([0, 0, 1, 1, 1, 2, 2, 2])  # sp 1 mixes GT 0 and GT 1; sp 2 mostly unlabeled
    assert metrics.superpoint_purity(superpoints, shape.instance) == pytest.approx(100 * 6 / 8)
    best = metrics.upper_bound(shape, superpoints)
    np.testing.assert_array_equal(best.point_instance, [0, 0, 1, 1, 1, -1, -1, -1])
    np.testing.assert_array_equal(best.semantic, [0, 1])
    # GT 0 recovered with IoU 2/3, GT 1 with IoU 2/4 (not > 0.5): class 1 missed.
    np.testing.assert_allclose(metrics.ap50([shape], [best], 2)[1], [100.0, 0.0])


def test_bad_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="predictions"):
        metrics.ap50([GT, GT], [pred(GT.instance, [0, 0], [1, 1])], 1)
    with pytest.raises(ValueError, match="points"):
        metrics.ap50([GT], [pred(GT.instance[:5], [0, 0], [1, 1])], 1)
    with pytest.raises(ValueError, match="shape"):
        metrics.semantic_iou(GT.semantic, GT.semantic[:3], 1)
    with pytest.raises(ValueError, match="do not match"):
        metrics.superpoint_purity(np.zeros(3, np.int32), GT.instance)
