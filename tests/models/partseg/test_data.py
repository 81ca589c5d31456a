"""ppl.models.partseg data generator: shapes, rendering, superpoints, masks and input validation."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from ppl.models.partseg import data, masks, render, shapes, superpoints
from ppl.models.partseg.types import PART_CLASSES, Masks, Views

CATEGORIES = tuple(PART_CLASSES)


@functools.cache
def example(category: str, seed: int) -> data.Example:
    return data.make_example(category, seed)


@functools.cache
def clean_masks(category: str, seed: int) -> Masks:
    ex = example(category, seed)
    return masks.make_masks(ex.shape, ex.views, 0, masks.MaskNoise.clean())


def gt_view_instances(ex: data.Example, v: int) -> dict[int, np.ndarray]:
    pp = ex.views.pixel_point[v]
    inst = np.where(pp >= 0, ex.shape.instance[np.maximum(pp, 0)], -1)
    return {int(i): inst == i for i in np.unique(inst[inst >= 0])}


# -- determinism -----------------------------------------------------------------
@pytest.mark.parametrize("category", CATEGORIES)
def test_same_seed_same_arrays(category):
    a, b = data.make_example(category, 7), data.make_example(category, 7)
    for x, y in [
        (a.shape.points, b.shape.points),
        (a.shape.colors, b.shape.colors),
        (a.shape.instance, b.shape.instance),
        (a.views.pixel_point, b.views.pixel_point),
        (a.superpoints, b.superpoints),
        (a.masks.label_map, b.masks.label_map),
    ]:
        np.testing.assert_array_equal(x, y)
    for ma, mb in zip(a.masks.masks, b.masks.masks):
        np.testing.assert_array_equal(ma, mb)
    c = example(category, 8)
    assert not np.array_equal(a.shape.points, c.shape.points)
    assert not np.array_equal(a.views.pixel_point, c.views.pixel_point)


def test_dataset_seeds_distinct_and_reproducible():
    seeds = [data.example_seed(3, i) for i in range(5)]
    assert len(set(seeds)) == 5
    assert seeds == [data.example_seed(3, i) for i in range(5)]
    ds = data.make_dataset("chair", 2, seed=3)
    np.testing.assert_array_equal(ds[1].shape.points, shapes.make_shape("chair", seeds[1]).points)


# -- shapes ----------------------------------------------------------------------
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("seed", range(6))
def test_shape_labels_consistent(category, seed):
    s = shapes.make_shape(category, seed, num_points=3000)
    k = len(PART_CLASSES[category])
    assert s.points.shape == s.normals.shape == s.colors.shape == (3000, 3)
    assert s.points.dtype == np.float32 and s.semantic.dtype == s.instance.dtype == np.int32
    assert abs(np.linalg.norm(s.points, axis=1).max() - 1) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=1), 1, atol=1e-5)
    assert s.colors.min() >= 0 and s.colors.max() <= 1
    assert set(np.unique(s.semantic)) <= set(range(-1, k))
    np.testing.assert_array_equal(s.semantic < 0, s.instance < 0)
    assert set(np.unique(s.instance[s.instance >= 0])) == set(range(s.num_instances))
    for i in range(s.num_instances):  # one class per instance
        assert len(np.unique(s.semantic[s.instance == i])) == 1

    counts = np.bincount(s.instance_semantic(), minlength=k)
    if category == "chair":
        assert (s.semantic >= 0).all()
        assert counts[0] == counts[1] == 1 and counts[2] == 4 and counts[3] in (0, 2)
    elif category == "table":
        assert (s.semantic >= 0).all()
        assert counts[0] == 1 and counts[1] in (4, 6) and counts[2] <= 3
    else:
        assert (s.semantic == -1).mean() > 0.3  # the unlabeled body
        assert counts[0] + counts[1] >= 1


def test_handles_match_drawers():
    for seed in range(10):
        table = shapes.make_shape("table", seed).instance_semantic()
        assert (table == 2).sum() == (table == 3).sum()  # one handle per drawer (if sampled)
        storage = shapes.make_shape("storage", seed).instance_semantic()
        assert (storage == 2).sum() <= (storage <= 1).sum()


def test_unknown_category_rejected():
    with pytest.raises(ValueError, match="unknown category 'sofa'"):
        shapes.make_shape("sofa", 0)
    with pytest.raises(ValueError, match="unknown category"):
        data.make_dataset("sofa", 1)


# -- rendering -------------------------------------------------------------------
@pytest.mark.parametrize("category", CATEGORIES)
def test_render_indices_and_projection(category):
    ex = example(category, 1)
    pp = ex.views.pixel_point
    assert pp.shape == (10, 160, 160) and pp.dtype == np.int32
    assert pp.min() >= -1 and pp.max() < len(ex.shape.points)
    np.testing.assert_array_equal(ex.views.cameras, render.DEFAULT_CAMERAS)
    points = render.normalize(ex.shape.points.astype(np.float64))
    coords, depth = render.project(points, ex.views.cameras, 160)
    focal = 80 / np.tan(np.deg2rad(render.FOV_DEG) / 2)
    radius = render.splat_radius(points)
    for v in range(10):
        rows, cols = np.nonzero(pp[v] >= 0)
        idx = pp[v, rows, cols]
        dist = np.hypot(coords[v, idx, 0] - rows, coords[v, idx, 1] - cols)
        assert (dist <= radius * focal / depth[v, idx] + 1e-4).all()  # within the point's splat
        position, _ = render.camera_frame(*ex.views.cameras[v].astype(np.float64))
        facing = np.sum(ex.shape.normals[idx] * (position - points[idx]), 1)
        assert (facing > 0).all()  # back faces culled
        assert 0.05 < (pp[v] >= 0).mean() < 0.8


def test_every_part_visible_in_some_view():
    all_visible = 0
    for category in CATEGORIES:
        for seed in range(4):
            ex = example(category, seed)
            seen = ex.shape.instance[ex.views.pixel_point[ex.views.pixel_point >= 0]]
            all_visible += set(range(ex.shape.num_instances)) <= set(seen.tolist())
    assert all_visible >= 11


def test_render_surfaces_hole_free_at_512():
    s = shapes.make_shape("table", 2)
    views = render.render(s, 512, render.DEFAULT_CAMERAS[:2])
    assert views.pixel_point.shape == (2, 512, 512)
    from scipy import ndimage

    for v in range(2):
        valid = views.pixel_point[v] >= 0
        filled = ndimage.binary_fill_holes(valid)
        assert (filled & ~valid).sum() < 0.01 * filled.sum()


def test_render_rejects_bad_cameras():
    with pytest.raises(ValueError, match=r"cameras must be \(V, 2\)"):
        render.render(shapes.make_shape("chair", 0), 32, np.zeros((3, 3)))


# -- superpoints -----------------------------------------------------------------
@pytest.mark.parametrize("category", ["chair", "table"])
def test_superpoints_pure(category):
    for seed in range(3):
        ex = example(category, seed)
        sp = ex.superpoints
        assert sp.dtype == np.int32 and sp.shape == ex.shape.instance.shape
        assert set(np.unique(sp)) == set(range(sp.max() + 1))
        assert 30 <= sp.max() + 1 <= 400
        assert superpoints.purity(sp, ex.shape.instance) >= 0.9


def test_purity_hand_case():
    sp = np.array([0, 0, 0, 1, 1, 1, 2])
    inst = np.array([0, 0, 1, 1, 1, -1, -1])
    assert superpoints.purity(sp, inst) == pytest.approx(5 / 7)
    assert superpoints.purity(np.arange(7), inst) == 1.0


# -- masks -----------------------------------------------------------------------
def test_label_map_smallest_covering_mask():
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    big = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)  # area 5
    small = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], bool)  # area 2
    tie = np.array([[0, 0, 0, 0], [0, 1, 0, 0]], bool)  # area 1
    tie2 = np.array([[0, 0, 0, 0], [0, 1, 0, 0]], bool)  # area 1, higher index
    lm = masks.label_map(np.stack([big, tie2 & False, small, tie, tie2]), valid)
    np.testing.assert_array_equal(lm, [[0, 2, 2, 5], [0, 3, 5, -1]])
    np.testing.assert_array_equal(masks.label_map(np.zeros((0, 2, 4), bool), valid), np.where(valid, 0, -1))


@pytest.mark.parametrize("category", CATEGORIES)
def test_clean_masks_reproduce_visible_instances(category):
    ex = example(category, 2)
    m = clean_masks(category, 2)
    inst_class = ex.shape.instance_semantic()
    for v in range(10):
        gt = gt_view_instances(ex, v)
        assert len(m.masks[v]) == len(gt)
        for j, i in enumerate(sorted(gt)):  # clean: instance order
            np.testing.assert_array_equal(m.masks[v][j], gt[i])
            assert m.mask_class[v][j] == inst_class[i]
        pp = ex.views.pixel_point[v]
        inst = np.where(pp >= 0, ex.shape.instance[np.maximum(pp, 0)], -1)
        rank = {i: j for j, i in enumerate(sorted(gt))}
        expected = np.where(pp < 0, -1, np.where(inst < 0, len(gt), 0))
        for i, j in rank.items():
            expected[inst == i] = j
        np.testing.assert_array_equal(m.label_map[v], expected)


def noisy(category: str, seed: int, **rates) -> Masks:
    ex = example(category, seed)
    return masks.make_masks(ex.shape, ex.views, 11, dataclasses.replace(masks.MaskNoise.clean(), **rates))


def test_miss_all_gives_no_masks():
    m = noisy("chair", 0, miss=1.0)
    ex = example("chair", 0)
    assert all(len(x) == 0 for x in m.masks)
    np.testing.assert_array_equal(m.label_map, np.where(ex.views.pixel_point >= 0, 0, -1))


def test_small_parts_missed_more():
    kept_small, kept_large = [], []
    for category in ("table", "storage"):
        for seed in range(4):
            ex = example(category, seed)
            m = noisy(category, seed, miss_small=1.0, small_area=0.003)  # a0 = 77 px at 160²
            for v in range(10):
                for g in gt_view_instances(ex, v).values():
                    found = any(np.array_equal(g, x) for x in m.masks[v])
                    if g.sum() <= 10:
                        kept_small.append(found)
                    elif g.sum() >= 300:
                        kept_large.append(found)
    assert len(kept_small) >= 10 and len(kept_large) >= 10
    assert np.mean(kept_small) < 0.3 and np.mean(kept_large) > 0.9


def test_flip_all_changes_every_class():
    ex = example("table", 1)
    m = noisy("table", 1, flip=1.0)
    clean = clean_masks("table", 1)
    for v in range(10):
        np.testing.assert_array_equal(m.masks[v], clean.masks[v])
        assert (m.mask_class[v] != clean.mask_class[v]).all()
        assert m.mask_class[v].max(initial=0) < len(PART_CLASSES[ex.shape.category])


def test_merge_all_nearby_gives_one_mask_per_class():
    m = noisy("chair", 3, merge=1.0, merge_gap=1.0)
    for v in range(10):
        assert len(m.mask_class[v]) == len(set(m.mask_class[v].tolist()))


def test_split_and_false_positives_add_masks():
    clean = clean_masks("chair", 1)
    split = noisy("chair", 1, split=1.0)
    assert sum(map(len, split.masks)) > 1.5 * sum(map(len, clean.masks))
    fp = noisy("chair", 1, false_positive=3.0)
    assert sum(map(len, fp.masks)) > sum(map(len, clean.masks)) + 10


def test_boundary_noise_is_local():
    from scipy import ndimage

    clean = clean_masks("storage", 0)
    m = noisy("storage", 0, boundary=0.5)
    changed = 0
    for v in range(10):
        assert len(m.masks[v]) <= len(clean.masks[v])  # only masks emptied by erosion disappear
        for b in m.masks[v]:  # within one pixel of a clean mask's boundary
            near = [
                not (ndimage.binary_erosion(a) & ~b).any() and not (b & ~ndimage.binary_dilation(a)).any()
                for a in clean.masks[v]
            ]
            assert any(near)
            changed += not any(np.array_equal(a, b) for a in clean.masks[v])
    assert changed > 10


def test_permutation_shuffles_ids():
    clean = clean_masks("table", 0)
    m = noisy("table", 0, permute=True)
    moved = 0
    for v in range(10):
        key = lambda x: x.tobytes()
        assert sorted(map(key, m.masks[v])) == sorted(map(key, clean.masks[v]))
        moved += any(not np.array_equal(a, b) for a, b in zip(m.masks[v], clean.masks[v]))
    assert moved >= 3


@pytest.mark.parametrize("category", CATEGORIES)
def test_default_noise_masks_within_valid_pixels(category):
    ex = example(category, 4)
    valid = ex.views.pixel_point >= 0
    for v in range(10):
        assert not (ex.masks.masks[v] & ~valid[v]).any()
        assert ex.masks.masks[v].reshape(len(ex.masks.masks[v]), -1).any(1).all()
        np.testing.assert_array_equal(ex.masks.label_map[v], masks.label_map(ex.masks.masks[v], valid[v]))
    data.validate(ex.shape, ex.views, ex.masks, ex.superpoints)


def test_noise_rates_validated():
    with pytest.raises(ValueError, match=r"MaskNoise.miss must be a probability"):
        masks.MaskNoise(miss=1.5)


def test_noise_levels():
    assert masks.MaskNoise.level("mild") == masks.MaskNoise()
    assert masks.MaskNoise.level("clean") == masks.MaskNoise.clean()
    heavy = masks.MaskNoise.level("heavy")
    for name in ("miss", "miss_small", "merge", "split", "boundary", "false_positive", "flip"):
        assert getattr(heavy, name) > getattr(masks.MaskNoise(), name), name
    message = r"unknown mask noise level 'loud'; expected one of clean, mild, heavy"
    with pytest.raises(ValueError, match=message):
        masks.MaskNoise.level("loud")


def mask_agreement(ex: data.Example) -> float:
    """Fraction of visible pixels whose label-map mask is mostly their own ground-truth instance."""
    hits = total = 0
    for v in range(len(ex.views.pixel_point)):
        point = ex.views.pixel_point[v]
        valid = point >= 0
        instance = np.where(valid, ex.shape.instance[point], -1)
        labels = ex.masks.label_map[v]
        for m in range(len(ex.masks.masks[v])):
            here = valid & (labels == m)
            if here.any():
                majority = np.bincount(instance[here]).argmax()
                hits += int((instance[here] == majority).sum())
        total += int(valid.sum())
    return hits / total


def test_heavy_noise_masks_are_valid_and_noisier():
    """Same shape and views: heavy noise masks are valid and agree less with the ground truth."""
    heavy = data.make_example("table", 7, noise=masks.MaskNoise.level("heavy"))
    data.validate(heavy.shape, heavy.views, heavy.masks, heavy.superpoints)
    mild = data.make_example("table", 7)
    clean = data.make_example("table", 7, noise=masks.MaskNoise.clean())
    np.testing.assert_array_equal(heavy.views.pixel_point, clean.views.pixel_point)
    scores = [mask_agreement(e) for e in (clean, mild, heavy)]
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2], scores


# -- validate --------------------------------------------------------------------
def test_validate_rejects_bad_inputs():
    ex = example("chair", 5)
    shape, views, m, sp = ex.shape, ex.views, ex.masks, ex.superpoints

    with pytest.raises(ValueError, match="unknown category 'sofa'"):
        data.validate(dataclasses.replace(shape, category="sofa"), views, m, sp)
    with pytest.raises(ValueError, match=r"label_map shape .* does not match views.pixel_point shape"):
        data.validate(shape, views, dataclasses.replace(m, label_map=m.label_map[:, :-1]), sp)
    small = Views(pixel_point=views.pixel_point[:, ::2, ::2], cameras=views.cameras)
    other = masks.make_masks(shape, small, 0)
    with pytest.raises(ValueError, match=r"masks.masks\[0\] must be \(M, 160, 160\) like the views"):
        data.validate(shape, views, dataclasses.replace(other, label_map=m.label_map), sp)
    holed = views.pixel_point.copy()
    holed[0, holed[0] >= 0] = -1
    with pytest.raises(ValueError, match="the masks reference absent points"):
        data.validate(
            shape, Views(holed, views.cameras), dataclasses.replace(m, masks=[x & False for x in m.masks])
        )
    with pytest.raises(ValueError, match=r"cover .* background pixels"):
        data.validate(shape, Views(holed, views.cameras), m)
    with pytest.raises(ValueError, match="masks have 9 views"):
        data.validate(shape, views, Masks(m.masks[:9], m.mask_class[:9], m.label_map[:9]))
    with pytest.raises(ValueError, match="superpoints must be"):
        data.validate(shape, views, m, sp[:-1])
    with pytest.raises(ValueError, match="disagree on which points are unlabeled"):
        bad = shape.semantic.copy()
        bad[0] = -1
        data.validate(dataclasses.replace(shape, semantic=bad), views)
    with pytest.raises(ValueError, match=r"views.pixel_point must lie in"):
        data.validate(shape, Views(views.pixel_point + len(shape.points), views.cameras))
