"""KITTI depth adapter on a tiny fixture in the BTS layout: raw RGB, 16-bit annotated depth, Eigen split files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vista.data.sources.base import SampleError, get_source
from vista.data.sources.kitti_depth import KittiDepth, sample_key

H, W = 6, 7
DATE = "2011_09_26"
D2, D5 = f"{DATE}_drive_0002_sync", f"{DATE}_drive_0005_sync"
# (drive, frame, depth folder or None, focal); frame 0000000005 exists in both drives
TRAIN = [
    (D2, "0000000005", "train", 721.5377),
    (D5, "0000000005", "train", 721.5377),
    (D2, "0000000006", "train", 700.0),
]
TEST = [(D5, "0000000010", None, 721.5377), (D2, "0000000069", "val", 721.5377)]


def rgb_rel(drive: str, frame: str, camera: str = "image_02") -> str:
    return f"{DATE}/{drive}/{camera}/data/{frame}.png"


def depth_rel(folder: str, drive: str, frame: str) -> str:
    return f"{folder}/{drive}/proj_depth/groundtruth/image_02/{frame}.png"


def line(drive: str, frame: str, folder: str | None, focal: float) -> str:
    return f"{rgb_rel(drive, frame)} {depth_rel(folder, drive, frame) if folder else 'None'} {focal}"


@pytest.fixture
def kitti(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(1)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for drive, frame, folder, _ in TRAIN + TEST:
        rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        path = tmp_path / "raw" / rgb_rel(drive, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path)
        arrays[f"{drive}_{frame}"] = {"rgb": rgb}
        if folder:
            raw = rng.integers(0, 65536, size=(H, W)).astype(np.uint16)
            raw[0, :4] = [0, 1, 255, 65535]
            path = tmp_path / "depth" / depth_rel(folder, drive, frame)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw.astype(np.uint16)).save(path)
            arrays[f"{drive}_{frame}"]["depth"] = raw
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/eigen_train_files_with_gt.txt").write_text("\n".join(line(*t) for t in TRAIN) + "\n")
    (tmp_path / "splits/eigen_test_files_with_gt.txt").write_text("\n".join(line(*t) for t in TEST) + "\n\n")
    return tmp_path, arrays


def test_get_source_returns_adapter(kitti: tuple[Path, dict]) -> None:
    src = get_source("kitti_depth", kitti[0])
    assert isinstance(src, KittiDepth)
    assert src.tasks == ("depth",) and src.max_depth == 80.0 and src.classes == () and src.void_id is None


def test_fixture_depth_is_16_bit(kitti: tuple[Path, dict]) -> None:
    root, arrays = kitti
    with Image.open(root / "depth" / depth_rel("train", D2, "0000000005")) as im:
        assert im.mode in ("I;16", "I")
        np.testing.assert_array_equal(np.asarray(im), arrays[f"{D2}_0000000005"]["depth"])


def test_list_follows_split_files(kitti: tuple[Path, dict]) -> None:
    root = kitti[0]
    src = KittiDepth(root)
    train = src.list("train")
    assert [r.key for r in train] == [f"{D2}_0000000005", f"{D5}_0000000005", f"{D2}_0000000006"]
    assert len({r.key for r in train}) == 3  # same frame number, different drives
    assert train[1].paths == {
        "rgb": str(root / "raw" / rgb_rel(D5, "0000000005")),
        "depth": str(root / "depth" / depth_rel("train", D5, "0000000005")),
    }
    assert all(r.split == "train" for r in train)
    assert src.skipped("train") == []
    test = src.list("test")
    assert [r.key for r in test] == [f"{D2}_0000000069"]
    assert src.skipped("test") == [str(root / "raw" / rgb_rel(D5, "0000000010"))]
    with pytest.raises(ValueError, match="val"):
        src.list("val")


def test_load_matches_fixture(kitti: tuple[Path, dict]) -> None:
    root, arrays = kitti
    src = KittiDepth(root)
    focals = {f"{d}_{f}": focal for d, f, _, focal in TRAIN + TEST}
    for ref in src.list("train") + src.list("test"):
        s = src.load(ref)
        assert s["key"] == ref.key and set(s) == {"key", "rgb", "depth", "meta"}
        np.testing.assert_array_equal(s["rgb"], arrays[ref.key]["rgb"])
        assert s["depth"].dtype == np.float32 and s["depth"].shape == (H, W)
        np.testing.assert_array_equal(s["depth"], arrays[ref.key]["depth"].astype(np.float64) / 256.0)
        assert s["depth"][0, :4].tolist() == [0.0, 1 / 256, 255 / 256, 65535 / 256]
        assert s["meta"] == {"dataset": "kitti_depth", "focal": focals[ref.key], "drive": ref.key[:26]}


def test_sample_key_names_drive_and_camera() -> None:
    assert sample_key(rgb_rel(D2, "0000000069")) == "2011_09_26_drive_0002_sync_0000000069"
    assert sample_key(f"{D2}/image_02/data/0000000069.png") == "2011_09_26_drive_0002_sync_0000000069"
    assert sample_key(rgb_rel(D2, "0000000069", "image_03")) == "2011_09_26_drive_0002_sync_image_03_0000000069"
    with pytest.raises(ValueError):
        sample_key("0000000069.png")


def _raises(fn, text: str) -> str:
    with pytest.raises(SampleError) as info:
        fn()
    assert text in str(info.value), str(info.value)
    return str(info.value)


def test_missing_and_corrupt_files(kitti: tuple[Path, dict]) -> None:
    root = kitti[0]
    src = KittiDepth(root)
    a, b, c = src.list("train")
    (root / "raw" / rgb_rel(D2, "0000000005")).unlink()
    assert _raises(lambda: src.load(a), "0000000005.png").startswith(a.paths["rgb"])
    Path(b.paths["depth"]).write_bytes(b"\x89PNG garbage, not an image")
    assert _raises(lambda: src.load(b), "0000000005.png").startswith(b.paths["depth"])
    Image.fromarray(np.zeros((H, W), np.uint8)).save(c.paths["depth"])  # 8-bit: not the annotated format
    assert "16-bit" in _raises(lambda: src.load(c), c.paths["depth"])
    Image.fromarray(np.zeros((H + 1, W), np.uint16)).save(c.paths["depth"])
    assert "shape" in _raises(lambda: src.load(c), c.paths["depth"])
    (root / "splits/eigen_test_files_with_gt.txt").unlink()
    _raises(lambda: KittiDepth(root).list("test"), "eigen_test_files_with_gt.txt")


@pytest.mark.parametrize(
    "bad",
    [
        f"{rgb_rel(D2, '0000000007')} None",  # two fields
        f"{rgb_rel(D2, '0000000007')} None 721.5 extra",
        f"{rgb_rel(D2, '0000000007')} None focal",
        f"{rgb_rel(D2, '0000000007')} None -1",
        "0000000007.png None 721.5377",  # no drive in the rgb path
    ],
)
def test_malformed_split_line(kitti: tuple[Path, dict], bad: str) -> None:
    root = kitti[0]
    listing = root / "splits/eigen_train_files_with_gt.txt"
    listing.write_text(f"{line(*TRAIN[0])}\n{bad}\n")
    msg = _raises(lambda: KittiDepth(root).list("train"), "eigen_train_files_with_gt.txt:2")
    assert msg.startswith(f"{listing}:2:")
    _raises(lambda: KittiDepth(root).skipped("train"), "eigen_train_files_with_gt.txt:2")


def test_duplicate_key_is_an_error(kitti: tuple[Path, dict]) -> None:
    root = kitti[0]
    (root / "splits/eigen_train_files_with_gt.txt").write_text(
        f"{line(*TRAIN[0])}\n{line(*TRAIN[1])}\n{line(*TRAIN[0])}\n"
    )
    assert "line 1" in _raises(lambda: KittiDepth(root).list("train"), "eigen_train_files_with_gt.txt:3")
