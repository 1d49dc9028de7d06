"""Cityscapes adapter on a tiny fixture in the official leftImg8bit / gtFine layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vista.data.sources.base import SampleError, get_source
from vista.data.sources.cityscapes import Cityscapes

H, W = 8, 16
# the official labelId -> trainId table, written out independently of the adapter
OFFICIAL = {
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
# split -> [(city, seq, frame)]; files are written in a shuffled order to check the sorting
FRAMES = {
    "train": [("bochum", "000000", "000313"), ("aachen", "000001", "000019"), ("aachen", "000000", "000019")],
    "val": [("frankfurt", "000000", "000294")],
    "test": [("berlin", "000000", "000019")],
}


def _label_ids(seed: int) -> np.ndarray:
    """Every labelId 0..33 at least once (128 pixels), rolled by ``seed`` so the samples differ."""
    return np.roll(np.arange(H * W) % 34, seed).reshape(H, W).astype(np.uint8)


def _image_path(root: Path, split: str, city: str, seq: str, frame: str) -> Path:
    return root / "leftImg8bit" / split / city / f"{city}_{seq}_{frame}_leftImg8bit.png"


def _label_path(root: Path, split: str, city: str, seq: str, frame: str) -> Path:
    return root / "gtFine" / split / city / f"{city}_{seq}_{frame}_gtFine_labelIds.png"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    seed = 0
    for split, frames in FRAMES.items():
        for city, seq, frame in frames:
            img, lab = _image_path(tmp_path, split, city, seq, frame), _label_path(tmp_path, split, city, seq, frame)
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img)
            Image.fromarray(_label_ids(seed)).save(lab)
            # the other gtFine files of the official archive must be ignored
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(lab.with_name(lab.name.replace("labelIds", "color")))
            seed += 5
    return tmp_path


def test_list_counts_keys_and_order(root: Path) -> None:
    src = Cityscapes(root)
    train = src.list("train")
    assert [r.key for r in train] == ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]
    assert all(r.split == "train" for r in train)
    assert train[0].paths["rgb"] == str(_image_path(root, "train", "aachen", "000000", "000019"))
    assert train[0].paths["seg"] == str(_label_path(root, "train", "aachen", "000000", "000019"))
    assert [r.key for r in src.list("val")] == ["frankfurt_000000_000294"]
    assert [r.key for r in src.list("test")] == ["berlin_000000_000019"]
    assert src.list("train") == train  # stable


def test_load_maps_label_ids_to_train_ids(root: Path) -> None:
    src = Cityscapes(root)
    for ref in src.list("train"):
        sample = src.load(ref)
        city, seq, frame = ref.key.split("_")
        label_ids = np.asarray(Image.open(_label_path(root, "train", city, seq, frame)))
        expected = np.array([[OFFICIAL.get(int(i), 255) for i in row] for row in label_ids], dtype=np.uint8)
        assert sample["key"] == ref.key
        assert sample["seg"].dtype == np.uint8 and sample["seg"].shape == (H, W)
        np.testing.assert_array_equal(sample["seg"], expected)
        assert set(np.unique(sample["seg"]).tolist()) == set(range(19)) | {255}
        rgb = np.asarray(Image.open(_image_path(root, "train", city, seq, frame)))
        assert sample["rgb"].dtype == np.uint8 and sample["rgb"].shape == (H, W, 3)
        np.testing.assert_array_equal(sample["rgb"], rgb)
        assert sample["meta"] == {"dataset": "cityscapes", "city": city}


def test_specific_ids(root: Path) -> None:
    lab = _label_path(root, "val", "frankfurt", "000000", "000294")
    ids = np.zeros((H, W), np.uint8)
    ids[0, :6] = [7, 26, 33, 0, 6, 30]  # road, car, bicycle, unlabeled, ground, trailer
    Image.fromarray(ids).save(lab)
    src = Cityscapes(root)
    seg = src.load(src.list("val")[0])["seg"]
    assert seg[0, :6].tolist() == [0, 13, 18, 255, 255, 255]
    assert (seg[1:] == 255).all()


def test_classes(root: Path) -> None:
    assert Cityscapes(root).num_classes == 19
    assert Cityscapes.classes[0] == "road" and Cityscapes.classes[13] == "car" and Cityscapes.classes[18] == "bicycle"
    assert Cityscapes.void_id == 255 and Cityscapes.tasks == ("seg",)


def test_missing_label_file(root: Path) -> None:
    lab = _label_path(root, "train", "bochum", "000000", "000313")
    lab.unlink()
    src = Cityscapes(root)
    refs = src.list("train")  # listed; the sample is rejected when loaded (prepare can skip it)
    assert refs[2].paths["seg"] == str(lab)
    with pytest.raises(SampleError, match="bochum_000000_000313_gtFine_labelIds.png: label file not found") as err:
        src.load(refs[2])
    assert str(err.value).startswith(str(lab))


def test_corrupt_image(root: Path) -> None:
    img = _image_path(root, "train", "aachen", "000001", "000019")
    img.write_bytes(b"not a png at all")
    src = Cityscapes(root)
    ref = src.list("train")[1]
    with pytest.raises(SampleError) as err:
        src.load(ref)
    assert str(err.value).startswith(str(img))


def test_corrupt_label(root: Path) -> None:
    lab = _label_path(root, "test", "berlin", "000000", "000019")
    lab.write_bytes(b"\x89PNG garbage")
    src = Cityscapes(root)
    with pytest.raises(SampleError) as err:
        src.load(src.list("test")[0])
    assert str(err.value).startswith(str(lab))


def test_label_id_above_33_is_bad_data(root: Path) -> None:
    lab = _label_path(root, "val", "frankfurt", "000000", "000294")
    ids = _label_ids(0)
    ids[3, 4] = 34
    Image.fromarray(ids).save(lab)
    src = Cityscapes(root)
    with pytest.raises(SampleError, match=r"\b34\b") as err:
        src.load(src.list("val")[0])
    assert str(err.value).startswith(str(lab))


def test_colour_label_rejected(root: Path) -> None:
    lab = _label_path(root, "val", "frankfurt", "000000", "000294")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(lab)
    src = Cityscapes(root)
    with pytest.raises(SampleError, match="single-channel") as err:
        src.load(src.list("val")[0])
    assert str(err.value).startswith(str(lab))


def test_bad_split_and_missing_root(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        Cityscapes(root).list("trainextra")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(tmp_path / "nowhere").list("train")


def test_get_source(root: Path) -> None:
    src = get_source("cityscapes", root)
    assert isinstance(src, Cityscapes) and src.root == root
    assert len(src.list("train")) == 3
