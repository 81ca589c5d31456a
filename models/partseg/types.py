"""The data that flows through the part-segmentation pipeline, shared by every module.

A :class:`Shape` is a colored point cloud with ground-truth labels; :class:`Views`
are its renderings (which point each pixel sees); :class:`Masks` are the noisy
"SAM-like" 2D instance masks per view and the per-pixel label map the EM reads;
superpoints are an int array over the points. All arrays are NumPy; the EM moves
what it needs to JAX.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Part classes per category. Index = semantic label; -1 marks unlabeled points
#: (the storage furniture's body).
PART_CLASSES: dict[str, tuple[str, ...]] = {
    "chair": ("seat", "back", "leg", "arm"),
    "table": ("top", "leg", "drawer", "handle"),
    "storage": ("door", "drawer", "handle"),
}
CATEGORIES = tuple(PART_CLASSES)


@dataclasses.dataclass
class Shape:
    """A procedural object: ``points``/``normals``/``colors`` ``(P, 3)`` float32 (colors in
    [0, 1]); ``semantic`` ``(P,)`` int32 index into ``PART_CLASSES[category]`` (−1:
    unlabeled); ``instance`` ``(P,)`` int32 ground-truth part instance in ``[0, I)``
    (−1: unlabeled); ``seed`` the generator seed."""

    category: str
    points: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    seed: int

    @property
    def num_instances(self) -> int:
        return int(self.instance.max()) + 1 if (self.instance >= 0).any() else 0

    def instance_semantic(self) -> np.ndarray:
        """``(I,)`` the semantic label of each ground-truth instance."""
        out = np.full(self.num_instances, -1, np.int32)
        for i in range(self.num_instances):
            out[i] = self.semantic[self.instance == i][0]
        return out


@dataclasses.dataclass
class Views:
    """``pixel_point`` ``(V, H, W)`` int32: the point seen at each pixel (z-buffer), −1
    for background; ``cameras`` ``(V, 2)`` (elevation, azimuth) in degrees."""

    pixel_point: np.ndarray
    cameras: np.ndarray


@dataclasses.dataclass
class Masks:
    """Noisy 2D instance masks of one shape's views.

    ``masks[v]`` ``(M_v, H, W)`` bool and ``mask_class[v]`` ``(M_v,)`` int32 (the
    detector's part class for each mask, possibly wrong); ``label_map`` ``(V, H, W)``
    int32: each valid pixel takes the smallest mask covering it (an index in
    ``[0, M_v)``), valid pixels under no mask take ``M_v`` ("other"), background −1.
    """

    masks: list[np.ndarray]
    mask_class: list[np.ndarray]
    label_map: np.ndarray

    @property
    def num_views(self) -> int:
        return len(self.masks)
