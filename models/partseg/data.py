r"""One benchmark example end to end: shape → views → superpoints → noisy masks, and input checks.

:func:`make_example` ties :mod:`.shapes`, :mod:`.render`, :mod:`.superpoints` and :mod:`.masks`
together; :func:`make_dataset` makes ``n`` examples of a category from one seed; :func:`validate`
checks that a shape, its views, masks and superpoints fit together and raises a ``ValueError`` that
names what is wrong (the EM and the heuristic call it on their inputs).

Seeds: example ``i`` of ``make_dataset(category, n, seed)`` uses the shape seed
``SeedSequence([seed, i])``'s first 31-bit word; the masks of an example with shape seed ``s`` come
from ``default_rng([s, 1])``, so re-noising the same shape (other ``noise``) keeps the geometry.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ppl.models.partseg.masks import MaskNoise, make_masks
from ppl.models.partseg.render import DEFAULT_CAMERAS, render
from ppl.models.partseg.shapes import make_shape
from ppl.models.partseg.superpoints import superpoints as make_superpoints
from ppl.models.partseg.types import PART_CLASSES, Masks, Shape, Views


@dataclasses.dataclass
class Example:
    """A generated shape with its renderings, superpoints ``(P,)`` int32 and noisy masks."""

    shape: Shape
    views: Views
    superpoints: np.ndarray
    masks: Masks

    @property
    def num_superpoints(self) -> int:
        return int(self.superpoints.max()) + 1


def make_example(
    category: str,
    seed: int,
    resolution: int = 160,
    num_points: int = 4000,
    noise: MaskNoise | None = None,
    cameras: np.ndarray = DEFAULT_CAMERAS,
) -> Example:
    """Generate, render, partition and mask one ``category`` object from ``seed``."""
    shape = make_shape(category, seed, num_points)
    views = render(shape, resolution, cameras)
    sp = make_superpoints(shape, seed=seed)
    masks = make_masks(shape, views, np.random.default_rng([seed, 1]), noise)
    return Example(shape=shape, views=views, superpoints=sp, masks=masks)


def example_seed(seed: int, index: int) -> int:
    """The shape seed of example ``index`` of a data set drawn with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def make_dataset(category: str, n: int, seed: int = 0, **kwargs) -> list[Example]:
    """``n`` examples of ``category``; ``kwargs`` go to :func:`make_example`."""
    if category not in PART_CLASSES:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(PART_CLASSES)}")
    return [make_example(category, example_seed(seed, i), **kwargs) for i in range(n)]


def validate(
    shape: Shape, views: Views, masks: Masks | None = None, superpoints: np.ndarray | None = None
) -> None:
    """Raise ``ValueError`` naming the problem if the inputs do not fit together."""
    if shape.category not in PART_CLASSES:
        raise ValueError(f"unknown category {shape.category!r}; expected one of {sorted(PART_CLASSES)}")
    num_classes = len(PART_CLASSES[shape.category])
    p = len(shape.points)
    for name in ("points", "normals", "colors"):
        arr = np.asarray(getattr(shape, name))
        if arr.shape != (p, 3):
            raise ValueError(f"shape.{name} must be ({p}, 3), got {arr.shape}")
    semantic, instance = np.asarray(shape.semantic), np.asarray(shape.instance)
    for name, arr in (("semantic", semantic), ("instance", instance)):
        if arr.shape != (p,):
            raise ValueError(f"shape.{name} must be ({p},), got {arr.shape}")
    if semantic.size and (semantic.min() < -1 or semantic.max() >= num_classes):
        raise ValueError(
            f"shape.semantic must lie in [-1, {num_classes}) for {shape.category!r}, "
            f"got [{semantic.min()}, {semantic.max()}]"
        )
    if np.any((semantic < 0) != (instance < 0)):
        raise ValueError("shape.semantic and shape.instance disagree on which points are unlabeled (−1)")

    pixel_point = np.asarray(views.pixel_point)
    if pixel_point.ndim != 3:
        raise ValueError(f"views.pixel_point must be (V, H, W), got shape {pixel_point.shape}")
    if pixel_point.size and (pixel_point.min() < -1 or pixel_point.max() >= p):
        raise ValueError(
            f"views.pixel_point must lie in [-1, {p}) (the shape has {p} points), "
            f"got [{pixel_point.min()}, {pixel_point.max()}]"
        )
    num_views = pixel_point.shape[0]
    cameras = np.asarray(views.cameras)
    if cameras.shape != (num_views, 2):
        raise ValueError(f"views.cameras must be ({num_views}, 2) for {num_views} views, got {cameras.shape}")

    if masks is not None:
        _validate_masks(masks, pixel_point, num_classes)
    if superpoints is not None:
        sp = np.asarray(superpoints)
        if sp.shape != (p,):
            raise ValueError(f"superpoints must be ({p},) (one id per point), got shape {sp.shape}")
        if not np.issubdtype(sp.dtype, np.integer):
            raise ValueError(f"superpoints must be integers, got dtype {sp.dtype}")
        if sp.size and sp.min() < 0:
            raise ValueError(f"superpoints must be non-negative ids, got minimum {sp.min()}")


def _validate_masks(masks: Masks, pixel_point: np.ndarray, num_classes: int) -> None:
    num_views, h, w = pixel_point.shape
    lm = np.asarray(masks.label_map)
    if len(masks.masks) != num_views or len(masks.mask_class) != num_views:
        raise ValueError(
            f"masks have {len(masks.masks)} views (mask_class: {len(masks.mask_class)}), "
            f"but the views have {num_views}"
        )
    if lm.shape != pixel_point.shape:
        raise ValueError(
            f"masks.label_map shape {lm.shape} does not match views.pixel_point shape {pixel_point.shape}"
        )
    valid = pixel_point >= 0
    for v in range(num_views):
        m, c = np.asarray(masks.masks[v]), np.asarray(masks.mask_class[v])
        if m.ndim != 3 or m.shape[1:] != (h, w):
            raise ValueError(f"masks.masks[{v}] must be (M, {h}, {w}) like the views, got shape {m.shape}")
        if c.shape != (m.shape[0],):
            raise ValueError(
                f"masks.mask_class[{v}] must be ({m.shape[0]},) (one class per mask), got {c.shape}"
            )
        if c.size and (c.min() < 0 or c.max() >= num_classes):
            raise ValueError(
                f"masks.mask_class[{v}] must lie in [0, {num_classes}), got [{c.min()}, {c.max()}]"
            )
        stray = int((m & ~valid[v]).sum())
        if stray:
            raise ValueError(
                f"masks.masks[{v}] cover {stray} background pixels (pixel_point −1: no point there)"
            )
        absent = int(((lm[v] >= 0) & ~valid[v]).sum())
        if absent:
            raise ValueError(
                f"masks.label_map[{v}] marks {absent} pixels valid where views.pixel_point is −1 "
                "(the masks reference absent points)"
            )
        missing = int(((lm[v] < 0) & valid[v]).sum())
        if missing:
            raise ValueError(f"masks.label_map[{v}] marks {missing} pixels background where a point is seen")
        if lm[v].max(initial=-1) > m.shape[0]:
            raise ValueError(
                f"masks.label_map[{v}] has label {lm[v].max()} but the view has {m.shape[0]} masks "
                f"(labels 0..{m.shape[0]}, {m.shape[0]} = other)"
            )
