r"""Procedural furniture made of box and cylinder parts, sampled as labeled colored point clouds.

No part-annotated 3D data set installs here, so the benchmark's shapes are generated. Each
category has the parts of :data:`~ppl.models.partseg.types.PART_CLASSES`:

* ``chair``: a seat, a back (tilted by up to 15°), four legs (boxes or cylinders) and, on about a
  third of the chairs, two arms (a bar on a post);
* ``table``: a top, four legs (six on long tables), 0–3 drawers hanging under the front edge, each
  with a handle (a bar or a knob);
* ``storage``: an unlabeled body (semantic and instance −1), its front covered by doors and/or
  drawers (thin panels standing 1.5–2.5 cm proud, with gaps of a few millimetres), one handle each.

Sampling: points are drawn uniformly on the union of the primitives' surfaces (area-proportional,
several times more than needed), points on a face that touches or lies inside another primitive
(a leg's top under the seat, a panel's back on the body) are dropped, and ``num_points`` of the rest
are kept uniformly at random, in random order. Normals are the faces' outward normals.

Colors: each shape draws a few materials from a palette (woods, metals, paints, fabrics); each part
class takes the shape's main material or, often, another one, so same-class parts share a material;
the material is jittered per shape (std 0.04), per part instance (std 0.025: similar, not identical,
like real furniture) and per point (std 0.01). Colors are albedo: there is no shading.

Coordinates: ``y`` up, the front faces ``+z`` (a camera at azimuth 0 sees it), generated in metres
then centred on the bounding box and scaled into the unit ball (the largest point norm is 1).
Everything comes from ``numpy.random.default_rng(seed)``: the same seed gives identical arrays.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from ppl.models.partseg.types import PART_CLASSES, Shape

#: Materials (RGB in [0, 1]): woods, metals, paints and fabrics.
PALETTE = np.array(
    [
        [0.55, 0.36, 0.20],  # walnut
        [0.72, 0.53, 0.32],  # oak
        [0.40, 0.26, 0.15],  # dark wood
        [0.86, 0.72, 0.52],  # birch
        [0.62, 0.62, 0.64],  # steel
        [0.25, 0.25, 0.27],  # dark metal
        [0.82, 0.82, 0.84],  # aluminium
        [0.92, 0.92, 0.90],  # white
        [0.12, 0.12, 0.13],  # black
        [0.70, 0.16, 0.15],  # red
        [0.20, 0.30, 0.60],  # blue
        [0.30, 0.50, 0.32],  # green
        [0.85, 0.80, 0.65],  # beige
        [0.50, 0.50, 0.50],  # grey
        [0.88, 0.52, 0.18],  # orange
        [0.20, 0.55, 0.55],  # teal
    ],
    np.float64,
)
_HIDDEN_OFFSET = 1e-3  # metres: a point is hidden if p + offset·n lies inside another primitive


@dataclasses.dataclass(frozen=True)
class Box:
    """An oriented box: ``center`` (3,), ``half`` (3,) half extents, ``rotation`` (3, 3) local → world."""

    center: np.ndarray
    half: np.ndarray
    rotation: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))

    def area(self) -> float:
        hx, hy, hz = self.half
        return 8.0 * (hx * hy + hy * hz + hx * hz)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        h = np.asarray(self.half, np.float64)
        face_area = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]]).repeat(2)  # ±x, ±y, ±z
        face = rng.choice(6, size=n, p=face_area / face_area.sum())
        axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
        local = rng.uniform(-1.0, 1.0, (n, 3)) * h
        local[np.arange(n), axis] = sign * h[axis]
        normal = np.zeros((n, 3))
        normal[np.arange(n), axis] = sign
        return local @ self.rotation.T + self.center, normal @ self.rotation.T

    def contains(self, q: np.ndarray) -> np.ndarray:
        local = (q - self.center) @ self.rotation
        return np.all(np.abs(local) < self.half, axis=1)


@dataclasses.dataclass(frozen=True)
class Cylinder:
    """A cylinder along world axis ``axis`` (0, 1, 2): ``center``, ``radius``, ``half_height``."""

    center: np.ndarray
    radius: float
    half_height: float
    axis: int = 1

    def area(self) -> float:
        return 2 * np.pi * self.radius * (2 * self.half_height) + 2 * np.pi * self.radius**2

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        r, h = self.radius, self.half_height
        side = 4 * np.pi * r * h
        cap = np.pi * r**2
        kind = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
        theta = rng.uniform(0, 2 * np.pi, n)
        rad = np.where(kind == 0, r, r * np.sqrt(rng.random(n)))
        along = np.where(kind == 0, rng.uniform(-h, h, n), np.where(kind == 1, h, -h))
        u, v = np.cos(theta), np.sin(theta)
        local = np.stack([rad * u, rad * v, along], 1)
        normal = np.where(
            (kind == 0)[:, None],
            np.stack([u, v, np.zeros(n)], 1),
            np.stack([np.zeros(n), np.zeros(n), np.where(kind == 1, 1.0, -1.0)], 1),
        )
        perm = _AXIS_PERM[self.axis]
        return local[:, perm] + self.center, normal[:, perm]

    def contains(self, q: np.ndarray) -> np.ndarray:
        d = q - self.center
        along = d[:, self.axis]
        radial = np.delete(d, self.axis, axis=1)
        return (np.abs(along) < self.half_height) & (np.sum(radial**2, 1) < self.radius**2)


# columns of (u, v, along) that give world (x, y, z) for a cylinder along axis 0, 1, 2
_AXIS_PERM = {0: [2, 0, 1], 1: [0, 2, 1], 2: [0, 1, 2]}
Primitive = Box | Cylinder


@dataclasses.dataclass
class Part:
    """One part: its primitives, semantic label (−1: unlabeled) and material color."""

    primitives: list[Primitive]
    semantic: int
    color: np.ndarray


def box(center, size, rotation: np.ndarray | None = None) -> Box:
    """A box from its ``center`` and full ``size`` (metres)."""
    rot = np.eye(3) if rotation is None else rotation
    return Box(np.asarray(center, np.float64), 0.5 * np.asarray(size, np.float64), rot)


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


class _Colors:
    """The shape's materials: a main one, then per class the main one or another draw."""

    def __init__(self, rng: np.random.Generator, share: float = 0.5):
        self.rng = rng
        self.share = share
        self.main = self._material()
        self.by_class: dict[int, np.ndarray] = {}

    def _material(self) -> np.ndarray:
        return PALETTE[self.rng.integers(len(PALETTE))] + 0.04 * self.rng.standard_normal(3)

    def of_class(self, semantic: int, like: int | None = None) -> np.ndarray:
        """The material of class ``semantic`` (``like``: copy that class's material if set)."""
        if semantic not in self.by_class:
            if like is not None and like in self.by_class and self.rng.random() < 0.7:
                self.by_class[semantic] = self.by_class[like]
            else:
                shared = self.rng.random() < self.share
                self.by_class[semantic] = self.main if shared else self._material()
        return self.by_class[semantic]

    def instance(self, semantic: int) -> np.ndarray:
        """A per-instance jittered copy of the class material."""
        return self.of_class(semantic) + 0.025 * self.rng.standard_normal(3)


def _leg(x: float, z: float, top: float, width: float, round_: bool) -> Primitive:
    """A vertical leg from the floor to ``top``, centred on ``(x, z)``."""
    if round_:
        return Cylinder(np.array([x, top / 2, z]), width / 2, top / 2, axis=1)
    return box([x, top / 2, z], [width, top, width])


def chair_parts(rng: np.random.Generator) -> list[Part]:
    """Seat (0), back (1), four legs (2), optionally two arms (3)."""
    seat, back, leg, arm = range(4)
    colors = _Colors(rng)
    colors.of_class(seat)
    colors.of_class(back, like=seat)
    w, d = rng.uniform(0.40, 0.60), rng.uniform(0.38, 0.55)
    t, h = rng.uniform(0.03, 0.08), rng.uniform(0.38, 0.50)
    parts = [Part([box([0, h - t / 2, 0], [w, t, d])], seat, colors.instance(seat))]

    bw, bt, bh = w * rng.uniform(0.8, 1.0), rng.uniform(0.02, 0.05), rng.uniform(0.35, 0.60)
    tilt = np.deg2rad(rng.uniform(0.0, 15.0))
    rot = _rot_x(-tilt)  # lean backwards (towards −z)
    pivot = np.array([0.0, h - t / 2, -d / 2 + bt / 2])
    centre = pivot + rot @ np.array([0.0, (bh + t / 2) / 2, 0.0])
    parts.append(Part([box(centre, [bw, bh + t / 2, bt], rot)], back, colors.instance(back)))

    lw, inset, round_ = rng.uniform(0.03, 0.06), rng.uniform(0.0, 0.04), rng.random() < 0.5
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (w / 2 - inset - lw / 2), sz * (d / 2 - inset - lw / 2)
            parts.append(Part([_leg(x, z, h - t, lw, round_)], leg, colors.instance(leg)))

    if rng.random() < 0.35:
        aw, ah = rng.uniform(0.03, 0.06), rng.uniform(0.18, 0.26)
        bar_t, length = rng.uniform(0.02, 0.04), d * rng.uniform(0.7, 0.95)
        for sx in (-1, 1):
            x = sx * (w / 2 - aw / 2)
            z0 = -d / 2 + bt
            bar = box([x, h + ah - bar_t / 2, z0 + length / 2], [aw, bar_t, length])
            post_z = z0 + length - aw / 2 - 0.01
            post = box([x, h + (ah - bar_t) / 2, post_z], [aw * 0.8, ah - bar_t, aw * 0.8])
            parts.append(Part([bar, post], arm, colors.instance(arm)))
    return parts


def _handle(rng: np.random.Generator, x: float, y: float, z_front: float, vertical: bool) -> Primitive:
    """A bar (box) or a knob (cylinder along z) standing on the face ``z = z_front``."""
    if rng.random() < 0.3:
        r, depth = rng.uniform(0.010, 0.016), rng.uniform(0.015, 0.03)
        return Cylinder(np.array([x, y, z_front + depth / 2]), r, depth / 2, axis=2)
    length, thick, depth = rng.uniform(0.06, 0.14), rng.uniform(0.012, 0.02), rng.uniform(0.015, 0.03)
    size = [thick, length, depth] if vertical else [length, thick, depth]
    return box([x, y, z_front + depth / 2], size)


def table_parts(rng: np.random.Generator) -> list[Part]:
    """Top (0), four or six legs (1), 0–3 drawers (2), one handle per drawer (3)."""
    top, leg, drawer, handle = range(4)
    colors = _Colors(rng)
    colors.of_class(top)
    colors.of_class(leg, like=top)
    colors.of_class(drawer, like=top)
    w, d = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9)
    t, height = rng.uniform(0.025, 0.06), rng.uniform(0.65, 0.78)
    parts = [Part([box([0, height - t / 2, 0], [w, t, d])], top, colors.instance(top))]

    lw, inset, round_ = rng.uniform(0.04, 0.08), rng.uniform(0.02, 0.08), rng.random() < 0.4
    xs = [-(w / 2 - inset - lw / 2), w / 2 - inset - lw / 2]
    if w > 1.3 and rng.random() < 0.5:
        xs.insert(1, 0.0)
    for x in xs:
        for sz in (-1, 1):
            z = sz * (d / 2 - inset - lw / 2)
            parts.append(Part([_leg(x, z, height - t, lw, round_)], leg, colors.instance(leg)))

    n_drawers = int(rng.integers(0, 4))
    if n_drawers:
        span = 2 * (w / 2 - inset - lw) - 0.02  # between the front legs
        if len(xs) == 3:
            span = w / 2 - inset - 1.5 * lw - 0.02  # between a corner leg and the middle one
            n_drawers = min(n_drawers, 2)
        gap = 0.01
        dw = (span - gap * (n_drawers - 1)) / n_drawers
        dh, depth = rng.uniform(0.08, 0.14), d * rng.uniform(0.6, 0.85)
        front = d / 2 - inset - rng.uniform(0.0, 0.02)
        x0 = -span / 2 if len(xs) == 2 else xs[0] + lw / 2 + 0.01
        for i in range(n_drawers):
            x = x0 + dw / 2 + i * (dw + gap)
            y = height - t - dh / 2
            body = box([x, y, front - depth / 2], [dw, dh, depth])
            parts.append(Part([body], drawer, colors.instance(drawer)))
            knob = _handle(rng, x, y, front, vertical=False)
            parts.append(Part([knob], handle, colors.instance(handle)))
    return parts


def storage_parts(rng: np.random.Generator) -> list[Part]:
    """Unlabeled body (−1), doors (0), drawers (1), one handle per door or drawer (2)."""
    door, drawer, handle = range(3)
    colors = _Colors(rng, share=0.6)
    body_color = colors.main + 0.025 * rng.standard_normal(3)
    colors.of_class(door)
    colors.of_class(drawer, like=door)
    w, h, d = rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.8), rng.uniform(0.35, 0.6)
    base = rng.uniform(0.0, 0.1)
    body = [box([0, base + (h - base) / 2, 0], [w, h - base, d])]
    if base > 0.03:
        body.append(box([0, base / 2, -0.02], [w - 0.04, base, d - 0.04]))  # a recessed plinth
    if rng.random() < 0.4:
        over = rng.uniform(0.01, 0.03)
        body.append(box([0, h + 0.0125, over / 2], [w + 2 * over, 0.025, d + over]))  # a top slab
    parts = [Part(body, -1, body_color)]

    margin, gap, thick = rng.uniform(0.015, 0.04), rng.uniform(0.004, 0.008), rng.uniform(0.015, 0.025)
    x_lo, x_hi, y_lo, y_hi = -w / 2 + margin, w / 2 - margin, base + margin, h - margin
    z_front = d / 2
    layout = rng.choice(["drawers", "doors", "mixed"], p=[0.3, 0.35, 0.35])
    panels: list[tuple[int, float, float, float, float, int]] = []  # class, x0, x1, y0, y1, hinge side

    def columns(n: int) -> list[tuple[float, float]]:
        edges = np.linspace(x_lo, x_hi, n + 1)
        return list(itertools.pairwise(edges))

    door_top = y_hi
    if layout in ("drawers", "mixed"):
        rows = int(rng.integers(3, 7)) if layout == "drawers" else int(rng.integers(1, 3))
        if layout == "drawers":
            row_h = (y_hi - y_lo) / rows
        else:  # drawer rows take at most half of the front, doors the rest
            row_h = min(rng.uniform(0.12, 0.2), 0.5 * (y_hi - y_lo) / rows)
        n_cols = 2 if (w > 0.8 and rng.random() < 0.5) else 1
        for r in range(rows):
            y1 = y_hi - r * row_h
            for x0, x1 in columns(n_cols):
                panels.append((drawer, x0, x1, y1 - row_h, y1, 0))
        door_top = y_hi - rows * row_h
    if layout in ("doors", "mixed"):
        n_doors = 2 if (w > 0.6 and rng.random() < 0.7) else 1
        hinge = [-1, 1] if n_doors == 2 else [int(rng.choice([-1, 1]))]
        for (x0, x1), side in zip(columns(n_doors), hinge):
            panels.append((door, x0, x1, y_lo, door_top, side))

    for cls, x0, x1, y0, y1, side in panels:
        x0, x1, y0, y1 = x0 + gap / 2, x1 - gap / 2, y0 + gap / 2, y1 - gap / 2
        panel = box([(x0 + x1) / 2, (y0 + y1) / 2, z_front + thick / 2], [x1 - x0, y1 - y0, thick])
        parts.append(Part([panel], cls, colors.instance(cls)))
        if cls == door:  # a vertical handle near the edge opposite the hinge
            hx = x0 + 0.05 if side == 1 else x1 - 0.05
            hy = y0 + (y1 - y0) * (0.5 if y1 - y0 < 0.9 else 0.6)
            grip = _handle(rng, hx, hy, z_front + thick, vertical=True)
        else:
            grip = _handle(rng, (x0 + x1) / 2, y0 + 0.6 * (y1 - y0), z_front + thick, vertical=False)
        parts.append(Part([grip], handle, colors.instance(handle)))
    return parts


_BUILDERS = {"chair": chair_parts, "table": table_parts, "storage": storage_parts}


def sample_parts(
    parts: list[Part], num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``num_points`` visible-surface points of ``parts``: points, normals, part index, primitive index."""
    prims = [(i, p) for i, part in enumerate(parts) for p in part.primitives]
    areas = np.array([p.area() for _, p in prims])
    oversample = 3
    while True:
        counts = rng.multinomial(oversample * num_points, areas / areas.sum())
        pts, nrm, prim_id = [], [], []
        for j, ((_, prim), n) in enumerate(zip(prims, counts)):
            p, q = prim.sample(int(n), rng)
            pts.append(p)
            nrm.append(q)
            prim_id.append(np.full(int(n), j))
        points, normals, prim_id = np.concatenate(pts), np.concatenate(nrm), np.concatenate(prim_id)
        probe = points + _HIDDEN_OFFSET * normals
        hidden = np.zeros(len(points), bool)
        for j, (_, prim) in enumerate(prims):
            hidden |= (prim_id != j) & prim.contains(probe)
        keep = np.flatnonzero(~hidden)
        if len(keep) >= num_points:
            break
        oversample *= 2
    keep = rng.choice(keep, num_points, replace=False)
    part_of_prim = np.array([i for i, _ in prims])
    return points[keep], normals[keep], part_of_prim[prim_id[keep]], prim_id[keep]


def make_shape(category: str, seed: int, num_points: int = 4000) -> Shape:
    """A procedural ``category`` object (``chair``, ``table``, ``storage``) with ``num_points`` points."""
    if category not in _BUILDERS:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(PART_CLASSES)}")
    if num_points < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    rng = np.random.default_rng(seed)
    parts = _BUILDERS[category](rng)
    points, normals, part, _ = sample_parts(parts, num_points, rng)

    part_semantic = np.array([p.semantic for p in parts], np.int32)
    semantic = part_semantic[part]
    # instances: labeled parts that received points, numbered 0..I−1 in build order
    labeled = np.unique(part[semantic >= 0])
    part_instance = np.full(len(parts), -1, np.int32)
    part_instance[labeled] = np.arange(len(labeled), dtype=np.int32)
    instance = part_instance[part]

    part_color = np.stack([p.color for p in parts])
    colors = np.clip(part_color[part] + 0.01 * rng.standard_normal((num_points, 3)), 0.0, 1.0)

    lo, hi = points.min(0), points.max(0)
    points = points - (lo + hi) / 2
    points = points / np.linalg.norm(points, axis=1).max()
    return Shape(
        category=category,
        points=points.astype(np.float32),
        normals=normals.astype(np.float32),
        colors=colors.astype(np.float32),
        semantic=semantic.astype(np.int32),
        instance=instance.astype(np.int32),
        seed=int(seed),
    )
