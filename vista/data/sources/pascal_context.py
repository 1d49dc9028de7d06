"""PASCAL-Context on VOC2010, the common 59-class setting: kept classes -> 0..58, everything else -> 255 = void.

``<root>/VOC2010/JPEGImages/<id>.jpg``, full annotations ``<root>/trainval/<id>.mat`` (MATLAB v5, variable
``LabelMap``: H×W ids of the 459 classes, 0 = unlabeled), ``<root>/labels.txt`` (459 lines ``<id>: <name>``),
``<root>/59_labels.txt`` (the 59 kept classes, same numbering) and the split lists ``<root>/train.txt`` /
``<root>/val.txt`` (one image id a line; VOC2010's ``ImageSets/Main/{train,val}.txt`` are used when absent).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from .base import SampleError, SampleRef, Source, read_rgb, register_source

DOWNLOAD = """\
PASCAL-Context is assembled by hand (nothing downloads automatically):
  1. VOC2010 trainval: http://host.robots.ox.ac.uk/pascal/VOC/voc2010/ -> VOCtrainval_03-May-2010.tar; untar it and
     move (or link) VOCdevkit/VOC2010 to <root>/VOC2010;
  2. from https://cs.stanford.edu/~roozbeh/pascal-context/ download trainval.tar.gz (untar into <root>, giving
     <root>/trainval/<id>.mat), labels.txt and 59_labels.txt (into <root>);
  3. the split lists: copy VOC2010/ImageSets/Main/train.txt and val.txt (4998 / 5105 ids) to <root>, or leave
     them out and the VOC2010 ones are read.
"""

VOID = 255


def read_label_table(path: Path) -> dict[int, str]:
    """Parse ``<id>: <name>`` lines into ``{id: name}`` (file order kept); malformed lines raise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PASCAL-Context label table not found\n{DOWNLOAD}")
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        num, sep, name = line.partition(":")
        if not sep or not num.strip().isdigit() or not name.strip():
            raise SampleError(f"{path}:{n}: expected '<id>: <name>', got {line!r}")
        label_id = int(num)
        if label_id in table:
            raise SampleError(f"{path}:{n}: id {label_id} listed twice")
        table[label_id] = name.strip()
    return table


def read_label_map(path: str | Path) -> np.ndarray:
    """The ``LabelMap`` array of a PASCAL-Context .mat file; unreadable files raise :class:`SampleError`."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["LabelMap"])
    except FileNotFoundError:
        raise SampleError(f"{path}: file not found") from None
    except Exception as err:
        raise SampleError(f"{path}: unreadable .mat file ({type(err).__name__}: {err})") from None
    if "LabelMap" not in mat:
        raise SampleError(f"{path}: no 'LabelMap' variable")
    labels = np.asarray(mat["LabelMap"])
    if labels.ndim != 2:
        raise SampleError(f"{path}: LabelMap should be 2-D, got shape {labels.shape}")
    integral = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and bool(np.all(labels == np.round(labels)))
    )
    if not integral:
        raise SampleError(f"{path}: LabelMap holds non-integer values (dtype {labels.dtype})")
    return labels.astype(np.int64)


@register_source
class PascalContext(Source):
    name = "pascal_context"
    tasks = ("seg",)
    void_id = VOID
    splits = ("train", "val")

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.labels = read_label_table(self.root / "labels.txt")
        kept_path = self.root / "59_labels.txt"
        kept = read_label_table(kept_path)
        unknown = sorted(set(kept) - set(self.labels))
        if unknown:
            raise SampleError(f"{kept_path}: id(s) {unknown} not in {self.root / 'labels.txt'}")
        if len(kept) >= VOID:
            raise SampleError(f"{kept_path}: {len(kept)} classes do not fit below the void id {VOID}")
        self.classes = tuple(kept.values())  # type: ignore[misc]  # read from the dataset, not fixed
        size = max([*self.labels, 0]) + 1
        self._lut = np.full(size, VOID, dtype=np.uint8)  # 459-class id -> 0..58, others void
        for train_id, label_id in enumerate(kept):
            self._lut[label_id] = train_id
        self._known = np.zeros(size, dtype=bool)  # ids a LabelMap may hold: 0 (unlabeled) and labels.txt's
        self._known[0] = True
        self._known[list(self.labels)] = True

    def _split_file(self, split: str) -> Path:
        own = self.root / f"{split}.txt"
        voc = self.root / "VOC2010" / "ImageSets" / "Main" / f"{split}.txt"
        if own.is_file() or not voc.is_file():
            return own
        return voc

    def list(self, split: str) -> list[SampleRef]:
        """The ids of ``split`` in sorted order (the image and .mat files are checked by :meth:`load`)."""
        self.check_split(split)
        listing = self._split_file(split)
        if not listing.is_file():
            raise FileNotFoundError(f"{listing}: PASCAL-Context split list not found\n{DOWNLOAD}")
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        if dup:
            raise SampleError(f"{listing}: image id(s) {dup} listed more than once")
        paths = {
            key: (self.root / "VOC2010" / "JPEGImages" / f"{key}.jpg", self.root / "trainval" / f"{key}.mat")
            for key in sorted(ids)
        }
        return [SampleRef(key, split, {"rgb": str(img), "seg": str(mat)}) for key, (img, mat) in paths.items()]

    def to_classes(self, labels: np.ndarray, path: str | Path) -> np.ndarray:
        """Map 459-class ids to ``0..num_classes-1`` (255 = void); ids not in labels.txt raise."""
        inside = (labels >= 0) & (labels < self._known.size)
        known = np.zeros(labels.shape, dtype=bool)
        known[inside] = self._known[labels[inside]]
        if not known.all():
            shown = np.unique(labels[~known])[:5].tolist()
            raise SampleError(f"{path}: label id(s) {shown} not in {self.root / 'labels.txt'}")
        return self._lut[labels]

    def load(self, ref: SampleRef) -> dict:
        """Read the JPEG and its LabelMap, mapped to the kept classes (255 = void)."""
        path = ref.paths["seg"]
        if not Path(path).is_file():
            raise SampleError(f"{path}: label file not found (for image {ref.paths['rgb']})")
        rgb = read_rgb(ref.paths["rgb"])
        labels = read_label_map(path)
        if labels.shape != rgb.shape[:2]:
            raise SampleError(f"{path}: LabelMap size {labels.shape} differs from the image's {rgb.shape[:2]}")
        seg = self.to_classes(labels, path)
        return {"key": ref.key, "rgb": rgb, "seg": seg, "meta": {"dataset": self.name}}
