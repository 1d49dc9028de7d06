"""PASCAL-Context adapter on a tiny fixture in the official layout (VOC2010 JPEGs, trainval/*.mat, label tables)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from vista.data.sources.base import SampleError, get_source
from vista.data.sources.pascal_context import PascalContext

H, W = 8, 16
LABELS = {1: "accordion", 2: "aeroplane", 9: "bag", 18: "bed", 25: "bird", 40: "bottle"}  # 6 of the 459
KEPT = {2: "aeroplane", 9: "bag", 25: "bird"}  # 3 "kept" classes -> 0, 1, 2
TRAIN = ["2008_000008", "2008_000002", "2010_001234"]  # unsorted on purpose
VAL = ["2009_000100", "2008_000021"]
ALL_IDS = np.array([0, 1, 2, 9, 18, 25, 40])


def _write_table(path: Path, table: dict[int, str]) -> None:
    path.write_text("".join(f"{i}: {name}\n" for i, name in table.items()))


def _image(root: Path, key: str) -> Path:
    return root / "VOC2010" / "JPEGImages" / f"{key}.jpg"


def _mat(root: Path, key: str) -> Path:
    return root / "trainval" / f"{key}.mat"


def _label_map(n: int) -> np.ndarray:
    return ALL_IDS[(np.arange(H * W) + n) % ALL_IDS.size].reshape(H, W).astype(np.uint16)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    _image(tmp_path, "x").parent.mkdir(parents=True)
    _mat(tmp_path, "x").parent.mkdir(parents=True)
    _write_table(tmp_path / "labels.txt", LABELS)
    _write_table(tmp_path / "59_labels.txt", KEPT)
    (tmp_path / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(VAL) + "\n")
    for n, key in enumerate(TRAIN + VAL):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(_image(tmp_path, key), quality=90)
        scipy.io.savemat(_mat(tmp_path, key), {"LabelMap": _label_map(n)})
    return tmp_path


def test_classes_from_59_labels(root: Path) -> None:
    src = PascalContext(root)
    assert src.classes == ("aeroplane", "bag", "bird")
    assert src.num_classes == 3
    assert src.void_id == 255 and src.tasks == ("seg",) and src.splits == ("train", "val")


def test_list_counts_keys_and_order(root: Path) -> None:
    src = PascalContext(root)
    train = src.list("train")
    assert [r.key for r in train] == sorted(TRAIN)
    assert all(r.split == "train" for r in train)
    assert train[0].paths == {"rgb": str(_image(root, "2008_000002")), "seg": str(_mat(root, "2008_000002"))}
    assert [r.key for r in src.list("val")] == ["2008_000021", "2009_000100"]
    assert src.list("train") == train


def test_load_maps_to_kept_classes(root: Path) -> None:
    src = PascalContext(root)
    remap = {0: 255, 1: 255, 2: 0, 9: 1, 18: 255, 25: 2, 40: 255}
    for ref in src.list("train") + src.list("val"):
        sample = src.load(ref)
        raw = scipy.io.loadmat(ref.paths["seg"])["LabelMap"]
        expected = np.vectorize(remap.__getitem__)(raw).astype(np.uint8)
        assert sample["key"] == ref.key
        assert sample["seg"].dtype == np.uint8 and sample["seg"].shape == (H, W)
        np.testing.assert_array_equal(sample["seg"], expected)
        assert set(np.unique(sample["seg"]).tolist()) == {0, 1, 2, 255}
        with Image.open(_image(root, ref.key)) as im:
            decoded = np.asarray(im.convert("RGB"))  # JPEG is lossy: compare to the decoded file
        assert sample["rgb"].dtype == np.uint8 and sample["rgb"].shape == (H, W, 3)
        np.testing.assert_array_equal(sample["rgb"], decoded)
        assert sample["meta"]["dataset"] == "pascal_context"


def test_kept_order_follows_59_labels(root: Path) -> None:
    _write_table(root / "59_labels.txt", {25: "bird", 2: "aeroplane"})
    src = PascalContext(root)
    assert src.classes == ("bird", "aeroplane")
    seg = src.load(src.list("train")[0])["seg"]
    raw = scipy.io.loadmat(_mat(root, "2008_000002"))["LabelMap"]
    assert (seg[raw == 25] == 0).all() and (seg[raw == 2] == 1).all()
    assert (seg[(raw != 25) & (raw != 2)] == 255).all()


def test_voc_split_lists_used_when_root_ones_absent(root: Path) -> None:
    (root / "train.txt").unlink()
    voc = root / "VOC2010" / "ImageSets" / "Main"
    voc.mkdir(parents=True)
    (voc / "train.txt").write_text("2010_001234\n2008_000008\n")
    assert [r.key for r in PascalContext(root).list("train")] == ["2008_000008", "2010_001234"]


def test_missing_label_file(root: Path) -> None:
    mat = _mat(root, "2008_000021")
    mat.unlink()
    src = PascalContext(root)
    refs = src.list("val")  # listed; the sample is rejected when loaded (prepare can skip it)
    assert [r.key for r in refs] == ["2008_000021", "2009_000100"]
    with pytest.raises(SampleError, match="2008_000021.mat: label file not found") as err:
        src.load(refs[0])
    assert str(err.value).startswith(str(mat))


def test_missing_image(root: Path) -> None:
    img = _image(root, "2010_001234")
    img.unlink()
    src = PascalContext(root)
    with pytest.raises(SampleError, match="file not found") as err:
        src.load(src.list("train")[2])
    assert str(err.value).startswith(str(img))


def test_corrupt_image(root: Path) -> None:
    img = _image(root, "2008_000008")
    img.write_bytes(b"\xff\xd8 definitely not a jpeg")
    src = PascalContext(root)
    with pytest.raises(SampleError) as err:
        src.load(src.list("train")[1])
    assert str(err.value).startswith(str(img))


def test_corrupt_mat(root: Path) -> None:
    mat = _mat(root, "2008_000008")
    mat.write_bytes(b"garbage" * 40)
    src = PascalContext(root)
    with pytest.raises(SampleError) as err:
        src.load(src.list("train")[1])
    assert str(err.value).startswith(str(mat))


def test_label_id_not_in_labels_txt(root: Path) -> None:
    mat = _mat(root, "2009_000100")
    labels = _label_map(0)
    labels[2, 3] = 7  # 7 is a real PASCAL-Context id, but not in this fixture's labels.txt
    scipy.io.savemat(mat, {"LabelMap": labels})
    src = PascalContext(root)
    with pytest.raises(SampleError, match=r"\[7\]") as err:
        src.load(src.list("val")[1])
    assert str(err.value).startswith(str(mat))


def test_label_id_beyond_table(root: Path) -> None:
    mat = _mat(root, "2009_000100")
    labels = _label_map(0)
    labels[0, 0] = 460
    scipy.io.savemat(mat, {"LabelMap": labels})
    src = PascalContext(root)
    with pytest.raises(SampleError, match="460") as err:
        src.load(src.list("val")[1])
    assert str(err.value).startswith(str(mat))


def test_missing_label_map_variable(root: Path) -> None:
    mat = _mat(root, "2008_000002")
    scipy.io.savemat(mat, {"labels": _label_map(0)})
    src = PascalContext(root)
    with pytest.raises(SampleError, match="LabelMap") as err:
        src.load(src.list("train")[0])
    assert str(err.value).startswith(str(mat))


def test_bad_tables(root: Path) -> None:
    _write_table(root / "59_labels.txt", {2: "aeroplane", 77: "cat"})
    with pytest.raises(SampleError, match="77"):
        PascalContext(root)
    (root / "labels.txt").write_text("1: accordion\naeroplane\n")
    with pytest.raises(SampleError, match="labels.txt:2"):
        PascalContext(root)
    (root / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        PascalContext(root)


def test_get_source(root: Path) -> None:
    src = get_source("pascal_context", root)
    assert isinstance(src, PascalContext) and src.root == root
    assert len(src.list("val")) == 2
