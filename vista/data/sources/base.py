"""The contract every dataset adapter fulfils: list the samples of a split, then load one.

A *source* maps a dataset's official on-disk layout to samples:

``{"key": str, "rgb": uint8 (H, W, 3), "depth"?: float32 (H, W) metres, "seg"?: integer (H, W),
"normal"?: float32 (H, W, 3) unit vectors, "meta": dict}``

- ``key`` is the source file's stem (unique within dataset and split).
- depth: 0, +inf mean "no measurement" (invalid); NaN or negative values are *bad data* (the prepare stage
  rejects them). Metres, float32.
- seg: the dataset's class ids, its void id kept as is (``void_id``); ids outside
  ``range(num_classes)`` ∪ {void_id} are bad data.
- normal: camera-frame unit vectors; (0, 0, 0) marks pixels without a normal.

Loading errors raise :class:`SampleError` naming the file.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

Sample = dict[str, Any]


class SampleError(ValueError):
    """A sample cannot be read or is invalid; the message names the file (or the sample)."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample comes from.

    Args:
        key: unique within dataset and split (the source file's stem).
        split: ``train``, ``val``, ``test``...
        paths: role (``rgb``, ``depth``, ``seg``, ...) -> file path (absolute, as found under the root).
        index: position inside a container file (e.g. NYU's .mat) or a procedural index.
    """

    key: str
    split: str
    paths: dict[str, str] = field(default_factory=dict)
    index: int | None = None


class Source:
    """Base class of the dataset adapters (one subclass per dataset, registered by ``name``)."""

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[tuple[str, ...]] = ()
    void_id: ClassVar[int | None] = None
    # depth evaluation protocol of the dataset: valid range (metres) and the standard crop
    min_depth: ClassVar[float] = 1e-3
    max_depth: ClassVar[float | None] = None
    eval_crop: ClassVar[str | None] = None  # "eigen" (NYU), "garg" (KITTI), None
    splits: ClassVar[tuple[str, ...]] = ("train", "val")

    def __init__(self, root: str | Path, **options: Any) -> None:
        self.root = Path(root)
        if options:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(options)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def list(self, split: str) -> list[SampleRef]:
        """The samples of ``split``, in a stable order."""
        raise NotImplementedError

    def load(self, ref: SampleRef) -> Sample:
        """Read one sample; raises :class:`SampleError` naming the file when it cannot."""
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name}: split {split!r} not in {self.splits}")


_SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    _SOURCES[cls.name] = cls
    return cls


# THE list of dataset names: each is an adapter module of that name under vista.data.sources, imported on
# demand (h5py/scipy only when needed); the settings (vista.config) and the CLI take their choices from it
DATASETS = ("synthetic", "camvid", "nyu_depth_v2", "kitti_depth", "cityscapes", "pascal_context")


def source_names() -> list[str]:
    return sorted(DATASETS)


def source_class(name: str) -> type[Source]:
    """The adapter class ``name`` (its dataset facts: tasks, classes, depth protocol), not instantiated."""
    if name not in DATASETS:
        raise ValueError(f"data.dataset={name!r}: choose one of {source_names()}")
    importlib.import_module(f"{__package__}.{name}")
    return _SOURCES[name]


def get_source(name: str, root: str | Path, **options: Any) -> Source:
    """The adapter ``name`` over the dataset at ``root``."""
    return source_class(name)(root, **options)


# -- readers shared by the adapters ---------------------------------------------------------------


@contextlib.contextmanager
def _open_image(path: str | Path) -> Iterator[Image.Image]:
    """An open image file; failing to find, read or decode it raises :class:`SampleError` naming the file."""
    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError:
        raise SampleError(f"{path}: file not found") from None
    except Exception as err:
        raise SampleError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


def read_image(path: str | Path, mode: str | None = None) -> np.ndarray:
    """Decode an image file; ``mode`` converts (``RGB``), ``None`` keeps the stored values (labels, 16-bit)."""
    with _open_image(path) as im:
        im.load()
        if mode is not None:
            im = im.convert(mode)
        return np.array(im)  # writable (torch.from_numpy warns on read-only arrays)


_WIDE_GRAY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def read_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """An image file as 8-bit RGB ``(H, W, 3)``.

    Grayscale is repeated over the three channels; 16-bit grayscale (and 32-bit integer, read as 16-bit
    values) is scaled from its full range to 0..255, not clipped at 255 (which turns it white); float
    images are read as 0..1. ``max_side``: a larger image is downscaled (aspect kept) while decoding, so
    memory stays bounded whatever the file's size.
    """
    with _open_image(path) as im:
        if max_side is not None and max(im.size) > max_side:
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale directly
            scale = max_side / max(im.size)
            size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        if im.mode in _WIDE_GRAY:
            full = _WIDE_GRAY[im.mode]
            gray = np.asarray(im, dtype=np.float64)
            if im.mode == "I" and gray.max(initial=0) > 65535:
                full = 2.0**32 - 1
            gray = np.clip(np.rint(gray / full * 255.0), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.array(im.convert("RGB"))


def sorted_files(folder: Path, pattern: str, what: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")
    return sorted(folder.glob(pattern))


def lazy(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Call ``fn`` once, on first use (e.g. open a big container file only when needed)."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get
