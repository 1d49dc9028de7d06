"""Cityscapes (fine annotations) in the official layout, labelIds mapped to the 19 train ids, 255 = void.

``<root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` (8-bit RGB) and
``<root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (8-bit label ids 0..33).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SampleError, SampleRef, Source, read_image, read_rgb, register_source

DOWNLOAD = """\
Cityscapes cannot be downloaded automatically (its licence needs an account):
  1. register at https://www.cityscapes-dataset.com/ and log in;
  2. download leftImg8bit_trainvaltest.zip (11 GB) and gtFine_trainvaltest.zip (241 MB);
  3. unzip both into the dataset root, giving <root>/leftImg8bit/{train,val,test}/<city>/... and
     <root>/gtFine/{train,val,test}/<city>/...
"""

IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds"
MAX_LABEL_ID = 33  # labelIds PNGs hold ids 0..33 (license plate, id -1, is never drawn)

# labelId -> trainId (cityscapesScripts' label table); every other id in 0..33 is void
TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
VOID = 255


def _lut() -> np.ndarray:
    lut = np.full(MAX_LABEL_ID + 1, VOID, dtype=np.uint8)
    for label_id, train_id in TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


LUT = _lut()


def to_train_ids(label_ids: np.ndarray, path: str | Path) -> np.ndarray:
    """Map a labelIds image to train ids (uint8, 255 = void); ids outside 0..33 raise :class:`SampleError`."""
    ids = label_ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids > MAX_LABEL_ID)]
    if bad.size:
        shown = np.unique(bad)[:5].tolist()
        raise SampleError(f"{path}: label id(s) {shown} outside the Cityscapes labelIds 0..{MAX_LABEL_ID}")
    return LUT[ids]


@register_source
class Cityscapes(Source):
    name = "cityscapes"
    tasks = ("seg",)
    classes = (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )
    void_id = VOID
    splits = ("train", "val", "test")

    def list(self, split: str) -> list[SampleRef]:
        """The images of ``split`` sorted by city then file name (label files are checked by :meth:`load`)."""
        self.check_split(split)
        folder = self.root / "leftImg8bit" / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: Cityscapes image folder not found\n{DOWNLOAD}")
        refs = []
        for img in sorted(folder.glob(f"*/*{IMAGE_SUFFIX}.png")):
            key = img.stem.removesuffix(IMAGE_SUFFIX)
            city = img.parent.name
            label = self.root / "gtFine" / split / city / f"{key}{LABEL_SUFFIX}.png"
            refs.append(SampleRef(key, split, {"rgb": str(img), "seg": str(label)}))
        return refs

    def load(self, ref: SampleRef) -> dict:
        """Read the RGB image and its labelIds, mapped to the 19 train ids (255 = void)."""
        path = ref.paths["seg"]
        if not Path(path).is_file():
            raise SampleError(f"{path}: label file not found (for image {ref.paths['rgb']})")
        rgb = read_rgb(ref.paths["rgb"])
        label_ids = read_image(path)
        if label_ids.ndim != 2:
            raise SampleError(f"{path}: expected a single-channel labelIds image, got shape {label_ids.shape}")
        if label_ids.shape != rgb.shape[:2]:
            raise SampleError(f"{path}: label size {label_ids.shape} differs from the image's {rgb.shape[:2]}")
        seg = to_train_ids(label_ids, path)
        return {"key": ref.key, "rgb": rgb, "seg": seg, "meta": {"dataset": self.name, "city": Path(path).parent.name}}
