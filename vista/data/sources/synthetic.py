"""Procedural indoor scenes with exact metric depth, camera-frame normals and semantic classes.

A room (floor, ceiling, walls) holding random spheres, boxes and vertical cylinders is ray-cast through a
pinhole camera with NYU-like intrinsics (fx = fy = 518.8 px at 640×480, scaled to the image size) and a
small random pitch/yaw. RGB comes from per-class procedural textures, Lambertian shading and Gaussian
sensor noise. Every sample is a pure function of ``(seed, index)``.

Camera frame: x right, y down, z forward (OpenCV); depth is the z coordinate in metres; normals are unit
vectors in the camera frame pointing towards the camera side of the surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import SampleRef, Source, register_source

DOWNLOAD = "Nothing to download: scenes are rendered on the fly from (seed, index); sizes and counts come from params."

CLASSES = ("floor", "ceiling", "wall", "sphere", "box", "cylinder")
_BASE_COLOURS = (
    np.array(
        [[150, 110, 70], [225, 225, 215], [180, 170, 150], [200, 40, 40], [40, 90, 200], [60, 170, 70]],
        dtype=np.float32,
    )
    / 255.0
)


@dataclass(frozen=True)
class SyntheticConfig:
    height: int = 96
    width: int = 128
    seed: int = 0
    max_objects: int = 6
    noise_std: float = 0.02


def _rotation(pitch: float, yaw: float) -> np.ndarray:
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return ry @ rx


def render(cfg: SyntheticConfig, index: int) -> dict[str, Any]:
    """Render sample ``index``: ``{key, rgb (H,W,3 uint8), depth (H,W f32, m), seg (H,W uint8),
    normal (H,W,3 f32), meta}``."""
    rng = np.random.default_rng([cfg.seed, index])
    h, w = cfg.height, cfg.width
    f = 518.8 * w / 640.0
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays_c = np.stack([(u - cx) / f, (v - cy) / f, np.ones_like(u)], axis=-1).reshape(-1, 3)  # (N, 3), z = 1
    rot = _rotation(rng.uniform(-0.15, 0.15), rng.uniform(-0.3, 0.3))
    d = rays_c @ rot.T  # ray directions in the world frame; a hit at t has camera depth t

    # room: x in [-rw/2, rw/2], y in [-(rh - cam_h), cam_h] (y down), z in [-1, rd]
    rw, rd, rh = rng.uniform(3.0, 6.0), rng.uniform(4.0, 8.0), rng.uniform(2.4, 3.2)
    cam_h = rng.uniform(1.0, 1.6)
    n = d.shape[0]
    t_best = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    cls = np.zeros(n, dtype=np.uint8)
    planes = [  # (axis, coordinate, world normal facing inwards, class)
        (1, cam_h, (0, -1, 0), 0),
        (1, -(rh - cam_h), (0, 1, 0), 1),
        (0, -rw / 2, (1, 0, 0), 2),
        (0, rw / 2, (-1, 0, 0), 2),
        (2, rd, (0, 0, -1), 2),
        (2, -1.0, (0, 0, 1), 2),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, coord, nrm, c in planes:
            t = coord / d[:, axis]
            hit = (t > 1e-6) & (t < t_best)
            t_best[hit], normal[hit], cls[hit] = t[hit], nrm, c

        for _ in range(rng.integers(1, cfg.max_objects + 1)):
            kind = rng.integers(3)
            size = rng.uniform(0.2, 0.6)
            centre = np.array([rng.uniform(-rw / 2 + size, rw / 2 - size), cam_h - size, rng.uniform(1.5, rd - size)])
            if kind == 0:  # sphere resting on the floor
                oc = -centre
                b = d @ oc
                disc = b * b - (d * d).sum(1) * ((oc * oc).sum() - size**2)
                t = (-b - np.sqrt(disc)) / (d * d).sum(1)
                hit = (disc > 0) & (t > 1e-6) & (t < t_best)
                p = t[hit, None] * d[hit]
                t_best[hit], normal[hit], cls[hit] = t[hit], (p - centre) / size, 3
            elif kind == 1:  # axis-aligned box on the floor (slab method)
                half = np.array([size, size, size]) * rng.uniform(0.6, 1.4, 3)
                centre[1] = cam_h - half[1]
                lo, hi = (centre - half) / d, (centre + half) / d
                t_near = np.minimum(lo, hi)
                t_enter, face = t_near.max(1), t_near.argmax(1)
                t_exit = np.maximum(lo, hi).min(1)
                hit = (t_enter <= t_exit) & (t_enter > 1e-6) & (t_enter < t_best)
                fn = np.zeros((hit.sum(), 3))
                fn[np.arange(fn.shape[0]), face[hit]] = -np.sign(d[hit, face[hit]])
                t_best[hit], normal[hit], cls[hit] = t_enter[hit], fn, 4
            else:  # vertical cylinder standing on the floor
                height = rng.uniform(0.5, 2.0)
                a = d[:, 0] ** 2 + d[:, 2] ** 2
                b = -(d[:, 0] * centre[0] + d[:, 2] * centre[2])
                cc = centre[0] ** 2 + centre[2] ** 2 - size**2
                disc = b * b - a * cc
                t = (-b - np.sqrt(disc)) / a
                y = t * d[:, 1]
                hit = (disc > 0) & (t > 1e-6) & (t < t_best) & (y <= cam_h) & (y >= cam_h - height)
                p = t[hit, None] * d[hit]
                radial = p - centre
                radial[:, 1] = 0
                t_best[hit], normal[hit], cls[hit] = t[hit], radial / size, 5

    points = t_best[:, None] * d
    # procedural textures: checker floor, stripes on walls, smooth noise on objects
    tex = np.ones(n)
    tex[cls == 0] = 0.75 + 0.25 * ((np.floor(points[cls == 0, 0] * 2) + np.floor(points[cls == 0, 2] * 2)) % 2)
    wall = cls == 2
    tex[wall] = 0.85 + 0.15 * np.sin(8 * (points[wall, 0] + points[wall, 2]))
    obj = cls >= 3
    tex[obj] = 0.8 + 0.2 * np.sin(5 * points[obj, 1]) * np.cos(5 * points[obj, 0])
    light = np.array([0.3, -1.0, -0.4])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(normal @ light, 0, None)
    tint = rng.uniform(0.85, 1.15, size=(len(CLASSES), 3))
    rgb = _BASE_COLOURS[cls] * tint[cls] * (tex * shade)[:, None]
    rgb = rgb + rng.normal(0, cfg.noise_std, size=rgb.shape)
    rgb8 = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)

    normal_c = normal @ rot  # world -> camera frame (rot is orthonormal)
    return {
        "key": f"synthetic_{cfg.seed:04d}_{index:07d}",
        "rgb": rgb8,
        "depth": t_best.reshape(h, w).astype(np.float32),
        "seg": cls.reshape(h, w),
        "normal": normal_c.reshape(h, w, 3).astype(np.float32),
        "meta": {"fx": f, "fy": f, "cx": cx, "cy": cy, "classes": list(CLASSES)},
    }


SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # disjoint index ranges per split


@register_source
class Synthetic(Source):
    """Procedural scenes as a source: ``root`` is unused; counts per split and sizes are options."""

    name = "synthetic"
    tasks = ("depth", "seg", "normal")
    classes = CLASSES
    void_id = None
    max_depth = 10.0
    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str | Path = "",
        height: int = 96,
        width: int = 128,
        seed: int = 0,
        counts: dict[str, int] | None = None,
    ) -> None:
        super().__init__(root)
        self.cfg = SyntheticConfig(height=height, width=width, seed=seed)
        self.counts = dict(counts or {"train": 256, "val": 32})

    def list(self, split: str) -> list[SampleRef]:
        self.check_split(split)
        off = SPLIT_OFFSET[split]
        return [
            SampleRef(f"synthetic_{self.cfg.seed:04d}_{off + i:07d}", split, {}, off + i)
            for i in range(self.counts.get(split, 0))
        ]

    def load(self, ref: SampleRef) -> dict[str, Any]:
        assert ref.index is not None
        sample = render(self.cfg, ref.index)
        sample["meta"]["dataset"] = self.name
        return sample
