"""NYU Depth V2, labeled subset (1449 RGB-D frames, 640×480) with the official train/test split and NYU-40 classes.

Files under ``root`` (see :data:`DOWNLOAD`):

- ``nyu_depth_v2_labeled.mat``: MATLAB v7.3 (HDF5). h5py sees MATLAB's column-major arrays transposed:
  ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) metres, ``labels`` (N, W, H) uint16 with the 894 raw
  class ids (0 = unlabeled). Each sample is transposed back to (H, W, 3) / (H, W).
- ``splits.mat``: MATLAB v5, ``trainNdxs`` (795) and ``testNdxs`` (654, the Eigen test split), 1-based.
- ``classMapping40.mat``: MATLAB v5, ``mapClass`` (1×894): raw id k -> NYU-40 id ``mapClass[k - 1]`` in 0..40,
  0 = void.

Output: seg = NYU-40 id − 1 (0..39), void (raw 0 or NYU-40 id 0) = 255; depth as stored (the labeled
depths are in-painted); normals derived from the depth by :func:`normals_from_depth` with the NYU
intrinsics, scaled to the image size. There are no per-sample files: keys are ``nyu_{i:04d}`` with the
1-based index ``i`` into the .mat, ``SampleRef.index`` is the 0-based index and ``paths["mat"]`` the .mat.

The HDF5 file is opened lazily, once per Source instance and process (never at import or construction),
and the open handle is not pickled, so a Source can be sent to worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import SampleError, SampleRef, Source, lazy, register_source

DOWNLOAD = """\
NYU Depth V2 (labeled subset) -- nothing is downloaded automatically. Put these files in one folder (the root):
  nyu_depth_v2_labeled.mat  (~2.8 GB) "Labeled dataset" on the official page
                            https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html
                            (http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat)
  splits.mat                the official train/test split, from the same site
                            (http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat)
  classMapping40.mat        the 894 -> 40 class mapping (variable mapClass) of Gupta et al.'s RGB-D toolbox
                            (ECCV 2014 / CVPR 2013 code by S. Gupta; mirrored in ankurhanda/nyuv2-meta-data on GitHub)
"""

LABELED = "nyu_depth_v2_labeled.mat"
SPLITS = "splits.mat"
MAPPING = "classMapping40.mat"
SPLIT_VARS = {"train": "trainNdxs", "test": "testNdxs"}
NUM_RAW_CLASSES = 894
# Kinect colour camera intrinsics of the NYU toolbox, at 640×480
FX, FY, CX, CY = 518.8579, 519.4696, 325.5824, 253.7362
WIDTH, HEIGHT = 640, 480

CLASSES_40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip


def _neighbours_valid(valid: np.ndarray, axis: int) -> np.ndarray:
    """Pixels whose ``np.gradient`` stencil along ``axis`` reads only valid pixels."""
    v = np.moveaxis(valid, axis, 0)
    out = v.copy()
    out[1:-1] &= v[:-2] & v[2:]
    out[0] &= v[1]
    out[-1] &= v[-2]
    return np.moveaxis(out, 0, axis)


def normals_from_depth(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Camera-frame unit normals (H, W, 3) float32 of a metric depth map (x right, y down, z forward).

    Pixels are back-projected with the pinhole intrinsics; the normal is the cross product of the
    horizontal and vertical central differences of the 3-D points (one-sided at the border), oriented
    towards the camera (n·p < 0). Pixels where the depth or a neighbour used is invalid (≤ 0 or not
    finite) get (0, 0, 0).
    """
    z = np.asarray(depth, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {z.shape}")
    h, w = z.shape
    normal = np.zeros((h, w, 3), dtype=np.float32)
    if h < 2 or w < 2:
        return normal
    valid = np.isfinite(z) & (z > 0)
    z = np.where(valid, z, 0.0)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    points = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)
    n = np.cross(np.gradient(points, axis=1), np.gradient(points, axis=0))
    norm = np.linalg.norm(n, axis=-1)
    ok = valid & _neighbours_valid(valid, 0) & _neighbours_valid(valid, 1) & (norm > 0)
    n = n[ok] / norm[ok, None]
    n[(n * points[ok]).sum(-1) > 0] *= -1
    normal[ok] = n
    return normal


def _load_v5(path: Path, var: str) -> np.ndarray:
    """One variable of a MATLAB v5 .mat file."""
    import scipy.io

    if not path.is_file():
        raise SampleError(f"{path}: file not found")
    try:
        data = scipy.io.loadmat(str(path), variable_names=[var])
    except Exception as err:
        raise SampleError(f"{path}: unreadable MATLAB file ({type(err).__name__}: {err})") from None
    if var not in data:
        raise SampleError(f"{path}: variable {var!r} missing")
    return np.asarray(data[var])


def _as_ints(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    flat = values.ravel()
    if flat.dtype.kind not in "iuf" or not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
        raise SampleError(f"{path}: {what} must be integers, got dtype {flat.dtype}")
    return flat.astype(np.int64)


@register_source
class NyuDepthV2(Source):
    name = "nyu_depth_v2"
    tasks = ("depth", "seg", "normal")
    classes = CLASSES_40
    void_id = 255
    max_depth = 10.0  # evaluation: 0.001-10 m inside the Eigen crop
    eval_crop = "eigen"
    splits = ("train", "test")

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.mat_path = self.root / LABELED
        self._lut: np.ndarray | None = None
        self._reset_handle()

    # -- the HDF5 handle: opened on first use, once per process, never pickled --------------------

    def _reset_handle(self) -> None:
        self._pid = os.getpid()
        self._open = lazy(self._open_labeled)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_open"], state["_pid"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handle()

    def _open_labeled(self) -> Any:
        import h5py

        if not self.mat_path.is_file():
            raise SampleError(f"{self.mat_path}: file not found")
        try:
            return h5py.File(self.mat_path, "r")
        except Exception as err:
            msg = f"unreadable MATLAB v7.3 / HDF5 file ({type(err).__name__}: {err})"
            raise SampleError(f"{self.mat_path}: {msg}") from None

    def _h5(self) -> Any:
        if self._pid != os.getpid():  # forked after the parent opened it: open our own handle
            self._reset_handle()
        return self._open()

    def _dataset(self, name: str, ndim: int) -> Any:
        h5 = self._h5()
        if name not in h5:
            raise SampleError(f"{self.mat_path}: dataset {name!r} missing")
        ds = h5[name]
        if ds.ndim != ndim:
            raise SampleError(f"{self.mat_path}: dataset {name!r} has shape {ds.shape}, expected {ndim} dimensions")
        return ds

    def _class_lut(self) -> np.ndarray:
        """raw id (0..894) -> output id (0..39, void 255)."""
        if self._lut is None:
            path = self.root / MAPPING
            m = _as_ints(_load_v5(path, "mapClass"), path, "mapClass")
            if m.size != NUM_RAW_CLASSES:
                raise SampleError(f"{path}: mapClass must hold {NUM_RAW_CLASSES} ids, got {m.size}")
            if m.min() < 0 or m.max() > len(CLASSES_40):
                raise SampleError(f"{path}: mapClass ids must lie in 0..40, got {m.min()}..{m.max()}")
            self._lut = np.concatenate([[self.void_id], np.where(m > 0, m - 1, self.void_id)]).astype(np.uint8)
        return self._lut

    # -- Source ---------------------------------------------------------------------------------------

    def list(self, split: str) -> list[SampleRef]:
        """The samples of ``split`` in the order of ``splits.mat``."""
        self.check_split(split)
        path = self.root / SPLITS
        idx = _as_ints(_load_v5(path, SPLIT_VARS[split]), path, SPLIT_VARS[split])
        if idx.size and idx.min() < 1:
            raise SampleError(f"{path}: {SPLIT_VARS[split]} holds index {idx.min()}, indices are 1-based")
        uniq, counts = np.unique(idx, return_counts=True)
        if np.any(counts > 1):
            raise SampleError(f"{path}: {SPLIT_VARS[split]} repeats index {uniq[counts > 1][0]}")
        if not self.mat_path.is_file():
            raise SampleError(f"{self.mat_path}: file not found")
        return [SampleRef(f"nyu_{i:04d}", split, {"mat": str(self.mat_path)}, int(i) - 1) for i in idx]

    def load(self, ref: SampleRef) -> dict[str, Any]:
        """RGB, depth (m), NYU-40 seg (void 255) and derived normals of sample ``ref.index`` (0-based)."""
        images = self._dataset("images", 4)
        depths = self._dataset("depths", 3)
        labels = self._dataset("labels", 3)
        n, _, w, h = images.shape
        if images.shape[1] != 3 or depths.shape != (n, w, h) or labels.shape != (n, w, h):
            raise SampleError(
                f"{self.mat_path}: inconsistent shapes images {images.shape}, depths {depths.shape}, "
                f"labels {labels.shape}"
            )
        i = ref.index
        if i is None or not 0 <= i < n:
            raise SampleError(f"{self.mat_path}: sample index {ref.index} out of range (0-based, {n} samples)")
        try:
            rgb = np.ascontiguousarray(np.asarray(images[i]).transpose(2, 1, 0))
            depth = np.ascontiguousarray(np.asarray(depths[i]).T, dtype=np.float32)
            raw = np.ascontiguousarray(np.asarray(labels[i]).T)
        except Exception as err:
            raise SampleError(f"{self.mat_path}: cannot read sample {i + 1} ({type(err).__name__}: {err})") from None
        if rgb.dtype != np.uint8 or raw.dtype.kind not in "iu":
            raise SampleError(
                f"{self.mat_path}: expected uint8 images and integer labels, got {rgb.dtype} and {raw.dtype}"
            )
        lut = self._class_lut()
        if raw.size and (raw.min() < 0 or raw.max() >= lut.size):
            raise SampleError(f"{self.mat_path}: sample {i + 1} has label id {raw.max()} outside 0..{lut.size - 1}")
        sx, sy = w / WIDTH, h / HEIGHT
        fx, fy, cx, cy = FX * sx, FY * sy, CX * sx, CY * sy
        return {
            "key": ref.key,
            "rgb": rgb,
            "depth": depth,
            "seg": lut[raw],
            "normal": normals_from_depth(depth, fx, fy, cx, cy),
            "meta": {"dataset": self.name, "index": i + 1, "fx": fx, "fy": fy, "cx": cx, "cy": cy},
        }
