"""PartSLIP heuristic and the shared post-processing on tiny hand-made scenes.

A scene is a set of pixel rectangles ("blocks"), one point per pixel; block ``b``'s points sit at
3D ``(col + dx_b, row, 0)``, so blocks that touch in the image can be far apart in 3D.
"""

from __future__ import annotations

import numpy as np
import pytest
from ppl.models.partseg import heuristic, postprocess
from ppl.models.partseg.types import Masks, Views


def scene(blocks, dxs, hw=(6, 16), num_views=2):
    """``blocks``: ``(r0, r1, c0, c1)`` half-open pixel rectangles. Returns points ``(P, 3)``, the
    block of each point and views (every view sees every point)."""
    h, w = hw
    pixel_point = np.full((h, w), -1, np.int32)
    points, block = [], []
    for b, ((r0, r1, c0, c1), dx) in enumerate(zip(blocks, dxs)):
        for r in range(r0, r1):
            for c in range(c0, c1):
                pixel_point[r, c] = len(points)
                points.append((c + dx, r, 0.0))
                block.append(b)
    views = Views(np.repeat(pixel_point[None], num_views, 0), np.zeros((num_views, 2)))
    return np.array(points, np.float32), np.array(block, np.int32), views


def rect_masks(views, per_view):
    """``per_view[v]``: list of ``((r0, r1, c0, c1), class)``; the label map is left to −1/other."""
    _, h, w = views.pixel_point.shape
    masks, classes = [], []
    for rects in per_view:
        m = np.zeros((len(rects), h, w), bool)
        for i, ((r0, r1, c0, c1), _) in enumerate(rects):
            m[i, r0:r1, c0:c1] = True
        masks.append(m)
        classes.append(np.array([c for _, c in rects], np.int32))
    label_map = np.where(views.pixel_point >= 0, 0, -1).astype(np.int32)
    return Masks(masks, classes, label_map)


A, B = (0, 6, 0, 6), (0, 6, 8, 16)  # two parts, 3D gap of 10


def two_parts():
    points, block, views = scene([A, B], [0, 10])
    # Superpoints: each part cut in two by column.
    superpoints = np.where(block == 0, points[:, 0] >= 3, 2 + (points[:, 0] >= 22)).astype(np.int32)
    masks = rect_masks(views, [[(A, 0), (B, 1)], [(B, 1), (A, 0)]])
    return points, block, superpoints, views, masks


def test_heuristic_recovers_two_parts_with_clean_masks() -> None:
    points, block, superpoints, views, masks = two_parts()
    labels = heuristic.heuristic_instances(points, superpoints, views, masks)
    assert labels.dtype == np.int32 and labels.shape == (4,)
    assert labels[0] == labels[1] != labels[2] == labels[3] and labels.min() >= 0
    inst = postprocess.postprocess(points, views, masks, labels, 2, superpoints)
    assert inst.num_instances == 2
    # Each predicted instance is exactly one part, with that part's class.
    for k in range(2):
        members = np.unique(block[inst.point_instance == k])
        assert members.size == 1 and inst.semantic[k] == members[0]
    np.testing.assert_allclose(inst.score, 1.0)
    np.testing.assert_array_equal(heuristic.to_points(labels, superpoints), labels[superpoints])


def test_uncovered_superpoint_gets_minus_one() -> None:
    points, _, superpoints, views, _ = two_parts()
    masks = rect_masks(views, [[(A, 0)], [(A, 0)]])
    labels = heuristic.heuristic_instances(points, superpoints, views, masks)
    assert (labels[2:] == -1).all() and labels[0] == labels[1] == 0


def test_assignment_takes_the_smallest_covering_mask() -> None:
    r = np.array([[0.9, 0.6, 0.2], [0.9, 0.4, np.nan]])
    area = np.array([100, 20, 5])
    np.testing.assert_array_equal(heuristic.assign(r, area), [1, 0])


def test_coverage_distance_is_partslips_normalized_l1() -> None:
    r = np.array([[1.0, 0.5, np.nan], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    d = heuristic.coverage_distance(r, np.array([[0, 1], [0, 2], [1, 2]]))
    # (0 + 0.5) / max(1.5, 1.0); the third mask's view does not see superpoint 0.
    np.testing.assert_allclose(d, [0.5 / 1.5, 1.0, 1.0])


def test_merge_joins_adjacent_identical_coverage_and_keeps_far_ones_apart() -> None:
    x, y, z = (0, 6, 0, 4), (0, 6, 4, 8), (0, 6, 10, 14)
    points, block, views = scene([x, y, z], [0, 0, 20])  # x and y touch in 3D, z is 20 away
    everything = (0, 6, 0, 14)
    masks = rect_masks(views, [[(everything, 0)], [(everything, 0)]])
    labels = heuristic.heuristic_instances(points, block, views, masks, group_by_mask=False)
    assert labels[0] == labels[1] != labels[2]
    adjacency = heuristic.superpoint_adjacency(points, block)
    np.testing.assert_array_equal(adjacency, [[0, 1]])
    # A second view with a mask on x alone makes x and y differ by 0.5 > 0.2: no merge.
    masks = rect_masks(views, [[(everything, 0)], [(x, 0)]])
    labels = heuristic.heuristic_instances(points, block, views, masks, group_by_mask=False)
    assert len(set(labels.tolist())) == 3


def test_split_separates_far_clusters_and_drops_fragments() -> None:
    points, block, _ = scene([A, B, (0, 1, 0, 2)], [0, 10, 40])  # 2-point fragment far away
    split = postprocess.spatial_split(points, np.zeros(points.shape[0], np.int32), min_points=5)
    assert split[block == 0].min() == split[block == 0].max() >= 0
    assert split[block == 1].min() == split[block == 1].max() >= 0
    assert split[block == 0][0] != split[block == 1][0]
    assert (split[block == 2] == -1).all()


def test_semantic_vote_and_score() -> None:
    points, _, views = scene([A], [0])
    # View 0: a class-1 mask on all 36 pixels and a class-0 mask on one row (6 pixels); view 1 none.
    masks = rect_masks(views, [[(A, 1), ((0, 1, 0, 6), 0)], []])
    semantic, score, votes = postprocess.vote(np.zeros(points.shape[0], np.int32), views, masks, 2)
    np.testing.assert_array_equal(votes, [[6, 36]])
    assert semantic[0] == 1
    np.testing.assert_allclose(score, [36 / 72])  # both views' visible pixels count


def test_box_filter_drops_an_instance_without_a_same_class_mask() -> None:
    points, block, views = scene([A, B], [0, 10])
    masks = rect_masks(views, [[(A, 0), ((0, 6, 6, 16), 1)], [(A, 0)]])
    keep = postprocess.box_filter(block, np.array([0, 2]), views, masks)
    np.testing.assert_array_equal(keep, [True, False])
    keep = postprocess.box_filter(block, np.array([0, 1]), views, masks)  # B's box IoU 48/60 > 0.5
    np.testing.assert_array_equal(keep, [True, True])
    # A class-1 mask whose box is the whole image has IoU 48/96 = 0.5 with B's box: not > 0.5.
    masks = rect_masks(views, [[((0, 6, 0, 16), 1)], []])
    assert not postprocess.box_filter(block, np.array([0, 1]), views, masks)[1]
    inst = postprocess.postprocess(points, views, masks, np.append(block, []).astype(np.int32), 2)
    assert inst.num_instances == 0 and (inst.point_instance == -1).all()


def test_bad_input_raises_value_error() -> None:
    points, _, superpoints, views, masks = two_parts()
    with pytest.raises(ValueError, match="superpoints"):
        heuristic.heuristic_instances(points[:-1], superpoints, views, masks)
    with pytest.raises(ValueError, match="views"):
        heuristic.heuristic_instances(
            points, superpoints, views, Masks(masks.masks[:1], masks.mask_class, masks.label_map)
        )
    bad = Masks([m[:, :, :-1] for m in masks.masks], masks.mask_class, masks.label_map)
    with pytest.raises(ValueError, match="masks have shape"):
        heuristic.heuristic_instances(points, superpoints, views, bad)
    with pytest.raises(ValueError, match="mask_class"):
        heuristic.heuristic_instances(
            points, superpoints, views, Masks(masks.masks, [c[:1] for c in masks.mask_class], masks.label_map)
        )
    with pytest.raises(ValueError, match="point ids"):
        heuristic.heuristic_instances(points[:10], superpoints[:10], views, masks)
    with pytest.raises(ValueError, match="instance labels"):
        postprocess.postprocess(points, views, masks, np.zeros(3, np.int32), 2)
    with pytest.raises(ValueError, match="classes"):
        postprocess.postprocess(points, views, masks, np.zeros(points.shape[0], np.int32), 1)


def test_generated_chairs_clean_masks_end_to_end() -> None:
    """Real generated chairs with noise-free masks: the heuristic recovers nearly every part."""
    data = pytest.importorskip("ppl.models.partseg.data")
    from ppl.models.partseg import metrics
    from ppl.models.partseg.masks import MaskNoise

    shapes, preds, bounds = [], [], []
    for seed in range(3):
        ex = data.make_example("chair", seed, resolution=160, noise=MaskNoise.clean())
        s = ex.shape
        labels = heuristic.heuristic_instances(s.points, ex.superpoints, ex.views, ex.masks)
        assert labels.shape == (ex.num_superpoints,) and labels.max() >= 3
        preds.append(postprocess.postprocess(s.points, ex.views, ex.masks, labels, 4, ex.superpoints))
        bounds.append(metrics.upper_bound(s, ex.superpoints))
        shapes.append(s)
        assert metrics.superpoint_purity(ex.superpoints, s.instance) > 90
    result, best = metrics.evaluate(shapes, preds, 4), metrics.evaluate(shapes, bounds, 4)
    assert best["AP50"] == pytest.approx(100.0) and best["mIoU"] > 90
    assert result["AP50"] > 90 and result["mIoU"] > 85
