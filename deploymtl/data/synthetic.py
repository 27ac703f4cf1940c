"""Built-in synthetic multi-task scenes: the default data for the demo and the tests (no download).

Each sample is a ray-cast room seen by a pinhole camera: a tilted back wall, a floor, a ceiling, and 0-3
objects (spheres and boxes) standing on the floor. One scene gives every task its label, so the tasks are
related (they share geometry) but not identical:

- segmentation (5 classes): wall 0, floor 1, ceiling 2, sphere 3, box 4;
- depth: z-distance of the first surface hit (always valid here);
- normals: the analytic unit normal of that surface, facing the camera, so it is consistent with depth;
- classification (4 classes): how many objects stand in the room (0-3).

The image is Lambertian shading of per-surface albedo (with a checker texture on the floor and stripes on
the wall) under a random light, plus sensor noise. Samples are deterministic in (seed, index).
"""

from __future__ import annotations

import numpy as np

SEG_CLASSES = ("wall", "floor", "ceiling", "sphere", "box")
NUM_SEG_CLASSES = len(SEG_CLASSES)
NUM_COUNT_CLASSES = 4
_WALL, _FLOOR, _CEIL, _SPHERE, _BOX = range(5)


def _plane_hit(dirs: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    """Ray parameter t where rays X = t*dir meet the plane n.X + d = 0 (inf where missed)."""
    denom = dirs @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(denom < -1e-6, -d / denom, np.inf)
    return t


def _sphere_hit(dirs: np.ndarray, c: np.ndarray, r: float) -> np.ndarray:
    b = dirs @ c
    a = (dirs * dirs).sum(-1)
    disc = b * b - a * (c @ c - r * r)
    with np.errstate(invalid="ignore"):
        t = (b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc > 0) & (t > 1e-4), t, np.inf)


def _box_hit(dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test for an axis-aligned box; returns t and the index of the entry axis."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(dirs) < 1e-9, 1e-9, dirs)
        t1, t2 = lo * inv, hi * inv
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, axis = tmin.max(-1), tmin.argmax(-1)
    t_far = tmax.min(-1)
    hit = (t_near <= t_far) & (t_near > 1e-4)
    return np.where(hit, t_near, np.inf), axis


class _Canvas:
    """What the first surface hit so far says per pixel: its ray parameter, class, normal and albedo."""

    def __init__(self, height: int, width: int) -> None:
        self.t = np.full((height, width), np.inf)
        self.seg = np.zeros((height, width), np.int64)
        self.normals = np.zeros((height, width, 3))
        self.albedo = np.zeros((height, width, 3))

    def take(self, t: np.ndarray, cls: int, normal: np.ndarray, color: np.ndarray) -> None:
        """Pixels where this surface (ray parameters `t`) is nearer than what was hit so far show it."""
        m = t < self.t
        self.t[m] = t[m]
        self.seg[m] = cls
        self.normals[m] = normal[m] if normal.ndim == 3 else normal
        self.albedo[m] = color[m] if color.ndim == 3 else color


def _camera_rays(height: int, width: int, f: float) -> np.ndarray:
    """(H, W, 3) pinhole ray directions through the pixel centres, z = 1, focal length `f` pixels."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u + 0.5 - width / 2) / f, (v + 0.5 - height / 2) / f, np.ones_like(u)], -1)


def _hit_points(dirs: np.ndarray, t: np.ndarray) -> np.ndarray:
    return dirs * np.where(np.isfinite(t), t, 0.0)[..., None]


def _draw_room(rng: np.random.Generator, canvas: _Canvas, dirs: np.ndarray) -> tuple[float, float]:
    """The back wall (striped), the floor (checkered) and the ceiling; returns (camera height, wall distance)."""
    cam_h = rng.uniform(1.0, 1.6)
    ceil_h = rng.uniform(1.0, 1.8)
    yaw = rng.uniform(-0.5, 0.5)
    wall_d = rng.uniform(4.0, 7.0)
    planes = [
        (_WALL, np.array([np.sin(yaw), 0.0, -np.cos(yaw)]), wall_d),
        (_FLOOR, np.array([0.0, -1.0, 0.0]), cam_h),
        (_CEIL, np.array([0.0, 1.0, 0.0]), ceil_h),
    ]
    base = {_WALL: rng.uniform(0.5, 0.9, 3), _FLOOR: rng.uniform(0.3, 0.7, 3), _CEIL: np.full(3, 0.85)}
    for cls, n, d in planes:
        t = _plane_hit(dirs, n, d)
        pts = _hit_points(dirs, t)
        color = np.broadcast_to(base[cls], dirs.shape).copy()
        if cls == _FLOOR:  # checker texture: a depth cue the network can use
            check = (np.floor(pts[..., 0] * 1.5) + np.floor(pts[..., 2] * 1.5)) % 2
            color *= (0.65 + 0.35 * check)[..., None]
        elif cls == _WALL:
            stripe = (np.floor(pts[..., 1] * 3.0) % 2)
            color *= (0.8 + 0.2 * stripe)[..., None]
        canvas.take(t, cls, n, color)
    return cam_h, wall_d


def _draw_objects(rng: np.random.Generator, canvas: _Canvas, dirs: np.ndarray, f: float, cam_h: float,
                  wall_d: float) -> int:
    """0-3 spheres and boxes standing on the floor in front of the wall; returns how many."""
    width = dirs.shape[1]
    count = int(rng.integers(0, NUM_COUNT_CLASSES))
    for _ in range(count):
        z = rng.uniform(2.0, wall_d * 0.8)
        x = rng.uniform(-0.6, 0.6) * z * width / (2 * f)
        color = rng.uniform(0.2, 1.0, 3)
        if rng.random() < 0.5:
            r = rng.uniform(0.25, 0.6)
            c = np.array([x, cam_h - r, z])
            t = _sphere_hit(dirs, c, r)
            canvas.take(t, _SPHERE, (_hit_points(dirs, t) - c) / r, color)
        else:
            size = rng.uniform(0.3, 0.8, 3)
            lo = np.array([x - size[0] / 2, cam_h - size[1] * 1.5, z - size[2] / 2])
            hi = np.array([x + size[0] / 2, cam_h, z + size[2] / 2])
            t, axis = _box_hit(dirs, lo, hi)
            n = np.zeros(dirs.shape)
            np.put_along_axis(n, axis[..., None], -np.sign(np.take_along_axis(dirs, axis[..., None], -1)), -1)
            canvas.take(t, _BOX, n, color)
    return count


def _shade(rng: np.random.Generator, albedo: np.ndarray, normals: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Lambertian shading under a random light with distance falloff, plus sensor noise; in [0, 1]."""
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-1.0, -0.3), rng.uniform(-1.0, -0.2)])
    light /= np.linalg.norm(light)  # unit vector towards the light: above (y < 0) and behind the camera (z < 0)
    lambert = np.clip(normals @ light, 0.0, 1.0)[..., None]
    falloff = 1.0 / (1.0 + 0.04 * depth**2)
    image = albedo * (0.25 + 0.75 * lambert) * (0.6 + 0.4 * falloff)
    image = image + rng.normal(0.0, 0.02, image.shape)
    return np.clip(image, 0.0, 1.0)


def render_scene(seed: int, index: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Render sample `index` of the set `seed`: image (H,W,3) in [0,1], seg (H,W) int64, depth (H,W,1),
    normals (H,W,3) unit vectors, count () int64."""
    rng = np.random.default_rng([int(seed), int(index)])  # drawn in this order: room, objects, light, noise
    f = 0.9 * width
    dirs = _camera_rays(height, width, f)
    canvas = _Canvas(height, width)
    cam_h, wall_d = _draw_room(rng, canvas, dirs)
    count = _draw_objects(rng, canvas, dirs, f, cam_h, wall_d)

    depth = (canvas.t * dirs[..., 2])[..., None]
    normals = canvas.normals / np.maximum(np.linalg.norm(canvas.normals, axis=-1, keepdims=True), 1e-9)
    flip = (normals * dirs).sum(-1, keepdims=True) > 0  # face the camera
    normals = np.where(flip, -normals, normals)
    return {
        "image": _shade(rng, canvas.albedo, normals, depth).astype(np.float32),
        "seg": canvas.seg,
        "depth": depth.astype(np.float32),
        "normals": normals.astype(np.float32),
        "count": np.array(count, np.int64),
    }
