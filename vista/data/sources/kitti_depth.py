"""KITTI depth on the Eigen split, with the KITTI depth benchmark's annotated ground truth (BTS layout).

Files under ``root`` (see :data:`DOWNLOAD`):

- ``raw/<date>/<drive>/image_02/data/<frame>.png``: KITTI raw RGB (left colour camera).
- ``depth/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame>.png``: annotated depth, 16-bit PNG,
  metres = value / 256, 0 = no measurement.
- ``splits/eigen_train_files_with_gt.txt`` (split ``train``), ``splits/eigen_test_files_with_gt.txt``
  (split ``test``): one sample per line, ``<rgb path under raw/> <depth path under depth/ or None> <focal px>``.

Lines whose depth is ``None`` (frames without annotated ground truth) are left out of :meth:`KittiDepth.list`
and reported by :meth:`KittiDepth.skipped`. A malformed line raises :class:`SampleError` naming the split
file and line number.

Keys: frame numbers repeat across drives, so the key is ``<drive>_<frame>``
(e.g. ``2011_09_26_drive_0002_sync_0000000069``); a camera other than ``image_02`` (the right camera,
``image_03``) is inserted as ``<drive>_<camera>_<frame>``. Two lines with the same key raise
:class:`SampleError`.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .base import SampleError, SampleRef, Source, read_image, read_rgb, register_source

DOWNLOAD = """\
KITTI depth (Eigen split) -- nothing is downloaded automatically. Under the root, put:
  raw/      the KITTI raw data, synced+rectified drives ("[synced+rectified data]" of each drive, unzipped by
            date: raw/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/*.png), from
            https://www.cvlibs.net/datasets/kitti/raw_data.php
  depth/    the annotated depth maps of the KITTI depth completion / prediction benchmark
            (data_depth_annotated.zip: train/ and val/ with <drive>/proj_depth/groundtruth/image_02/*.png), from
            https://www.cvlibs.net/datasets/kitti/eval_depth.php?benchmark=depth_prediction
  splits/   eigen_train_files_with_gt.txt and eigen_test_files_with_gt.txt (Eigen et al. 2014 split with the
            annotated ground truth, as distributed with BTS: github.com/cleinc/bts, folder train_test_inputs);
            depth paths are read relative to depth/, so prefix them with train/ or val/ to match the folders
"""

SPLIT_FILES = {"train": "splits/eigen_train_files_with_gt.txt", "test": "splits/eigen_test_files_with_gt.txt"}
DEPTH_SCALE = 256.0
LEFT_CAMERA = "image_02"


def sample_key(rgb: str) -> str:
    """``<drive>_<frame>`` (``<drive>_<camera>_<frame>`` for cameras other than ``image_02``) of an rgb path
    ``.../<drive>/<camera>/data/<frame>.png``."""
    parts = PurePosixPath(rgb).parts
    if len(parts) < 4:
        raise ValueError(f"expected <drive>/<camera>/data/<frame>.png, got {rgb!r}")
    drive, camera, frame = parts[-4], parts[-3], PurePosixPath(rgb).stem
    return f"{drive}_{frame}" if camera == LEFT_CAMERA else f"{drive}_{camera}_{frame}"


@register_source
class KittiDepth(Source):
    name = "kitti_depth"
    tasks = ("depth",)
    classes = ()
    void_id = None
    max_depth = 80.0  # evaluation: 0.001-80 m inside the Garg crop
    eval_crop = "garg"
    splits = ("train", "test")

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self._parsed: dict[str, tuple[list[SampleRef], list[str], dict[str, float]]] = {}

    def _parse(self, split: str) -> tuple[list[SampleRef], list[str], dict[str, float]]:
        """(samples, rgb paths of the lines without ground truth, key -> focal) of ``split``, read once."""
        self.check_split(split)
        if split in self._parsed:
            return self._parsed[split]
        listing = self.root / SPLIT_FILES[split]
        try:
            text = listing.read_text()
        except FileNotFoundError:
            raise SampleError(f"{listing}: split file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SampleError(f"{listing}: unreadable split file ({type(err).__name__}: {err})") from None
        refs: list[SampleRef] = []
        skipped: list[str] = []
        seen: dict[str, int] = {}
        focals: dict[str, float] = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) != 3:
                    raise ValueError(f"expected '<rgb> <depth or None> <focal>', got {len(parts)} fields")
                rgb_rel, depth_rel, focal_s = parts
                focal = float(focal_s)
                if not (math.isfinite(focal) and focal > 0):
                    raise ValueError(f"focal must be a positive number, got {focal_s!r}")
                key = sample_key(rgb_rel)
            except ValueError as err:
                raise SampleError(f"{listing}:{n}: {err}: {line!r}") from None
            rgb = self.root / "raw" / rgb_rel.lstrip("/")
            if depth_rel == "None":
                skipped.append(str(rgb))
                continue
            if key in seen:
                raise SampleError(f"{listing}:{n}: key {key!r} already used on line {seen[key]}: {line!r}")
            seen[key] = n
            paths = {"rgb": str(rgb), "depth": str(self.root / "depth" / depth_rel.lstrip("/"))}
            refs.append(SampleRef(key, split, paths, None))
            focals[key] = focal
        self._parsed[split] = (refs, skipped, focals)
        return self._parsed[split]

    def list(self, split: str) -> list[SampleRef]:
        """The samples of ``split`` with ground truth, in the order of the split file."""
        return list(self._parse(split)[0])

    def skipped(self, split: str) -> list[str]:
        """RGB paths (under ``root/raw``) of the lines of ``split`` whose depth is ``None``, in file order."""
        return list(self._parse(split)[1])

    def load(self, ref: SampleRef) -> dict[str, Any]:
        """RGB and depth in metres (0 = invalid) of one sample; meta holds the focal length in pixels."""
        rgb = read_rgb(ref.paths["rgb"])
        depth_path = ref.paths["depth"]
        raw = read_image(depth_path)
        if raw.dtype not in (np.uint16, np.int32) or raw.ndim != 2:
            raise SampleError(
                f"{depth_path}: expected a 16-bit single-channel depth PNG, got dtype {raw.dtype} shape {raw.shape}"
            )
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise SampleError(f"{depth_path}: values outside 0..65535 ({raw.min()}..{raw.max()})")
        if raw.shape != rgb.shape[:2]:
            raise SampleError(
                f"{depth_path}: depth shape {raw.shape} differs from image {ref.paths['rgb']} shape {rgb.shape[:2]}"
            )
        focals = self._parse(ref.split)[2]
        if ref.key not in focals:
            raise SampleError(f"{self.root / SPLIT_FILES[ref.split]}: no sample {ref.key!r} (focal length unknown)")
        return {
            "key": ref.key,
            "rgb": rgb,
            "depth": raw.astype(np.float32) / np.float32(DEPTH_SCALE),
            "meta": {"dataset": self.name, "focal": focals[ref.key], "drive": Path(ref.paths["rgb"]).parents[2].name},
        }
