r"""Point z-buffer rendering: which point each pixel of each view sees.

Cameras follow PartSLIP's ``render_pc.py``: ten (elevation, azimuth) pairs in degrees,
:data:`DEFAULT_CAMERAS` = (10, 0), (10, 90), (10, 180), (10, 270), (40, 0), (40, 120), (40, 240),
(−20, 60), (−20, 180), (−20, 300), a perspective camera with a 60° field of view at distance 2.2
looking at the origin with ``y`` up (PyTorch3D's ``look_at_view_transform`` + ``FoVPerspectiveCameras``
defaults), the points first centred on their mean and scaled so the largest norm is 1 (PartSLIP's
``normalize_pc``). Azimuth 0 looks at the ``+z`` side.

Each point is splatted as a disc of constant world radius (``splat`` = 1.2 times the median distance
to the 4th nearest neighbour, so surfaces are hole-free at any resolution: the disc's pixel radius
grows with the resolution) and the nearest point wins each pixel. Points whose normal faces away from
the camera are culled (``cull``), so a hole in a near surface shows background rather than the far
side of the object. NumPy, vectorised per view (``np.minimum.at`` over depth ranks). The original
(PyTorch3D) used a screen-space radius of 0.005 in NDC at 800², 10k points, no culling.
"""

from __future__ import annotations

import numpy as np
from ppl.models.partseg.types import Shape, Views
from scipy.spatial import cKDTree

#: PartSLIP's ten (elevation, azimuth) views, degrees.
DEFAULT_CAMERAS = np.array(
    [
        [10, 0],
        [10, 90],
        [10, 180],
        [10, 270],
        [40, 0],
        [40, 120],
        [40, 240],
        [-20, 60],
        [-20, 180],
        [-20, 300],
    ],
    np.float32,
)
DISTANCE = 2.2
FOV_DEG = 60.0


def normalize(points: np.ndarray) -> np.ndarray:
    """PartSLIP's normalization: subtract the mean, divide by the largest norm."""
    centred = points - points.mean(0)
    return centred / np.linalg.norm(centred, axis=1).max()


def camera_frame(
    elevation: float, azimuth: float, distance: float = DISTANCE
) -> tuple[np.ndarray, np.ndarray]:
    """Camera position ``(3,)`` and world→camera rotation ``(3, 3)`` (rows: right, up, forward)."""
    e, a = np.deg2rad(elevation), np.deg2rad(azimuth)
    position = distance * np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return position, np.stack([right, up, forward])


def project(
    points: np.ndarray, cameras: np.ndarray = DEFAULT_CAMERAS, resolution: int = 160, fov_deg: float = FOV_DEG
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(V, P, 2)`` as (row, col), pixel centres at integers, and depths ``(V, P)``.

    ``points`` must already be normalized (:func:`normalize`).
    """
    focal = (resolution / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    coords, depths = [], []
    for elevation, azimuth in np.asarray(cameras, np.float64):
        position, rot = camera_frame(elevation, azimuth)
        cam = (points - position) @ rot.T
        z = cam[:, 2]
        col = resolution / 2 + focal * cam[:, 0] / z - 0.5
        row = resolution / 2 - focal * cam[:, 1] / z - 0.5
        coords.append(np.stack([row, col], 1))
        depths.append(z)
    return np.stack(coords), np.stack(depths)


def splat_radius(points: np.ndarray, splat: float = 1.2, k: int = 4) -> float:
    """World splat radius: ``splat`` × the median distance to the ``k``-th nearest neighbour."""
    dist, _ = cKDTree(points).query(points, k=k + 1)
    return float(splat * np.median(dist[:, k]))


def render(
    shape: Shape,
    resolution: int = 160,
    cameras: np.ndarray = DEFAULT_CAMERAS,
    splat: float = 1.2,
    fov_deg: float = FOV_DEG,
    cull: bool = True,
) -> Views:
    """Render ``shape`` from ``cameras`` ``(V, 2)``: ``pixel_point`` ``(V, resolution, resolution)``."""
    cameras = np.asarray(cameras, np.float32)
    if cameras.ndim != 2 or cameras.shape[1] != 2:
        raise ValueError(f"cameras must be (V, 2) (elevation, azimuth), got shape {cameras.shape}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    points = normalize(np.asarray(shape.points, np.float64))
    n = len(points)
    radius = splat_radius(points, splat)
    focal = (resolution / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    coords, depths = project(points, cameras, resolution, fov_deg)
    normals = np.asarray(shape.normals, np.float64)

    out = np.full((len(cameras), resolution * resolution), -1, np.int32)
    for v in range(len(cameras)):
        drawn = np.arange(n)
        if cull:  # drop points whose normal faces away from the camera
            position, _ = camera_frame(*cameras[v].astype(np.float64))
            drawn = np.flatnonzero(np.sum(normals * (position - points), 1) > 0)
        if len(drawn) == 0:
            continue
        row, col, z = coords[v, drawn, 0], coords[v, drawn, 1], depths[v, drawn]
        r2 = ((radius * focal / z) ** 2).astype(np.float32)
        reach = int(np.ceil(np.sqrt(r2.max())))
        offsets = np.arange(-reach, reach + 1)
        dy, dx = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
        disc = dy**2 + dx**2 <= (reach + 1) ** 2
        dy, dx = dy[disc], dx[disc]
        base_r, base_c = np.rint(row).astype(np.int64), np.rint(col).astype(np.int64)
        fr, fc = (base_r - row).astype(np.float32), (base_c - col).astype(np.float32)
        d2 = (fr[:, None] + dy.astype(np.float32)) ** 2 + (fc[:, None] + dx.astype(np.float32)) ** 2
        local, which = np.nonzero(d2 <= r2[:, None])
        pr, pc = base_r[local] + dy[which], base_c[local] + dx[which]
        ok = (pr >= 0) & (pr < resolution) & (pc >= 0) & (pc < resolution)
        local, pixel = local[ok], (pr * resolution + pc)[ok]
        # nearest point per pixel: minimum depth rank
        order = np.argsort(z, kind="stable")
        rank = np.empty(len(z), np.int64)
        rank[order] = np.arange(len(z))
        best = np.full(resolution * resolution, len(z), np.int64)
        np.minimum.at(best, pixel, rank[local])
        seen = best < len(z)
        out[v, seen] = drawn[order[best[seen]]]
    return Views(pixel_point=out.reshape(len(cameras), resolution, resolution), cameras=cameras.copy())
