"""NYU Depth V2 adapter on a tiny fixture written in the official formats (MATLAB v7.3 / HDF5 + v5 .mat)."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from vista.data.sources.base import SampleError, SampleRef, get_source
from vista.data.sources.nyu_depth_v2 import CX, CY, FX, FY, NyuDepthV2, normals_from_depth

N, H, W = 3, 8, 10  # non-square, so a missed transpose changes the shape
HOLE = (3, 4)  # invalid depth pixel of sample 1


def mapclass() -> np.ndarray:
    """Raw id k -> NYU-40 id k % 41 (so 41, 82, ... map to void)."""
    return (np.arange(1, 895) % 41).astype(np.float64)[None, :]  # 1×894 doubles, as MATLAB saves them


def plane_depth(n0: np.ndarray, p0: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Depth of the plane through p0 with normal n0, seen by a pinhole camera."""
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)
    return (n0 @ p0) / (rays @ n0)


def write_v73(path: Path, **datasets: np.ndarray) -> None:
    """An HDF5 file with a 512-byte user block holding a MATLAB v7.3 header, like MATLAB writes."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + b"\0" * 8 + b"\x00\x02IM")


@pytest.fixture
def nyu(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.5, size=(N, H, W)).astype(np.float32)
    depth[0] = 2.0  # fronto-parallel wall 2 m away, with one hole
    depth[0][HOLE] = 0.0
    labels = rng.integers(0, 895, size=(N, H, W)).astype(np.uint16)
    labels[0, 0, :6] = [0, 1, 40, 41, 894, 82]
    # MATLAB stores H×W×3×N / H×W×N column-major; h5py sees the reversed dimensions
    write_v73(
        tmp_path / "nyu_depth_v2_labeled.mat",
        images=rgb.transpose(0, 3, 2, 1),
        depths=depth.transpose(0, 2, 1),
        labels=labels.transpose(0, 2, 1),
    )
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1.0], [3.0]]), "testNdxs": np.array([[2.0]])})
    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": mapclass()})
    return tmp_path, {"rgb": rgb, "depth": depth, "labels": labels}


def expected_seg(raw: np.ndarray) -> np.ndarray:
    m = mapclass()[0].astype(int)
    out = np.full(raw.shape, 255, dtype=np.int64)
    for k in np.unique(raw):
        if k > 0 and m[k - 1] > 0:
            out[raw == k] = m[k - 1] - 1
    return out


def test_get_source_returns_adapter(nyu: tuple[Path, dict]) -> None:
    src = get_source("nyu_depth_v2", nyu[0])
    assert isinstance(src, NyuDepthV2)
    assert src.num_classes == 40 and src.classes[0] == "wall" and src.classes[-1] == "otherprop"
    assert src.void_id == 255 and src.max_depth == 10.0 and src.tasks == ("depth", "seg", "normal")


def test_list_follows_splits_mat(nyu: tuple[Path, dict]) -> None:
    root = nyu[0]
    src = NyuDepthV2(root)
    train, test = src.list("train"), src.list("test")
    assert [r.key for r in train] == ["nyu_0001", "nyu_0003"]
    assert [r.index for r in train] == [0, 2]
    assert [(r.key, r.index, r.split) for r in test] == [("nyu_0002", 1, "test")]
    assert train[0].paths == {"mat": str(root / "nyu_depth_v2_labeled.mat")}
    keys = [r.key for r in train + test]
    assert len(set(keys)) == len(keys)
    with pytest.raises(ValueError, match="val"):
        src.list("val")


def test_load_matches_fixture(nyu: tuple[Path, dict]) -> None:
    root, data = nyu
    src = NyuDepthV2(root)
    for ref in src.list("train") + src.list("test"):
        s = src.load(ref)
        i = ref.index
        assert s["key"] == ref.key
        assert s["rgb"].dtype == np.uint8 and s["rgb"].shape == (H, W, 3)
        np.testing.assert_array_equal(s["rgb"], data["rgb"][i])
        assert s["depth"].dtype == np.float32 and s["depth"].shape == (H, W)
        np.testing.assert_array_equal(s["depth"], data["depth"][i])
        assert np.issubdtype(s["seg"].dtype, np.integer)
        np.testing.assert_array_equal(s["seg"], expected_seg(data["labels"][i]))
        assert s["normal"].dtype == np.float32 and s["normal"].shape == (H, W, 3)
        assert s["meta"]["dataset"] == "nyu_depth_v2" and s["meta"]["index"] == i + 1


def test_seg_mapping_through_class_mapping40(nyu: tuple[Path, dict]) -> None:
    src = NyuDepthV2(nyu[0])
    seg = src.load(src.list("train")[0])["seg"]
    # raw 0 (unlabeled) -> void; 1 -> NYU-40 1 -> 0; 40 -> 39; 41 -> NYU-40 0 -> void; 894 -> 894 % 41 = 33 -> 32
    assert seg[0, :6].tolist() == [255, 0, 39, 255, 32, 255]
    assert set(np.unique(seg).tolist()) <= set(range(40)) | {255}


def test_load_normals_of_a_wall(nyu: tuple[Path, dict]) -> None:
    src = NyuDepthV2(nyu[0])
    s = src.load(src.list("train")[0])
    fx, fy, cx, cy = FX * W / 640, FY * H / 480, CX * W / 640, CY * H / 480
    assert s["meta"]["fx"] == pytest.approx(fx) and s["meta"]["cy"] == pytest.approx(cy)
    np.testing.assert_array_equal(s["normal"], normals_from_depth(s["depth"], fx, fy, cx, cy))
    r, c = HOLE
    bad = np.zeros((H, W), bool)
    bad[r, c] = bad[r - 1, c] = bad[r + 1, c] = bad[r, c - 1] = bad[r, c + 1] = True
    assert np.all(s["normal"][bad] == 0)
    np.testing.assert_allclose(s["normal"][~bad], np.broadcast_to([0, 0, -1], ((~bad).sum(), 3)), atol=1e-6)


def test_normals_fronto_parallel_plane() -> None:
    n = normals_from_depth(np.full((H, W), 3.5, np.float32), 7.0, 9.0, 4.5, 3.5)
    assert n.dtype == np.float32 and n.shape == (H, W, 3)
    np.testing.assert_allclose(n, np.broadcast_to([0, 0, -1], (H, W, 3)), atol=1e-6)


@pytest.mark.parametrize("n0", [[0.3, -0.2, -1.0], [-0.5, 0.4, -0.8]])
def test_normals_tilted_plane_is_analytic(n0: list[float]) -> None:
    n0 = np.asarray(n0) / np.linalg.norm(n0)
    k = (12.0, 11.0, 4.7, 3.2)
    depth = plane_depth(n0, np.array([0.1, -0.2, 3.0]), *k)
    assert np.all(depth > 0)
    n = normals_from_depth(depth.astype(np.float32), *k)
    np.testing.assert_allclose(n, np.broadcast_to(n0, (H, W, 3)), atol=1e-4)
    # the same plane given with its normal flipped: the result still faces the camera
    np.testing.assert_allclose(normals_from_depth(plane_depth(-n0, np.array([0.1, -0.2, 3.0]), *k), *k), n, atol=1e-4)


def test_normals_zero_where_depth_or_neighbour_invalid() -> None:
    depth = np.full((H, W), 2.0)
    holes = {(2, 2): 0.0, (5, 7): np.nan, (0, 9): np.inf, (7, 0): -1.0}
    for rc, value in holes.items():
        depth[rc] = value
    n = normals_from_depth(depth, 10.0, 10.0, 5.0, 4.0)
    bad = np.zeros((H, W), bool)
    for r, c in holes:
        for dr, dc in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]:
            if 0 <= r + dr < H and 0 <= c + dc < W:
                bad[r + dr, c + dc] = True
    assert np.all(n[bad] == 0)
    np.testing.assert_allclose(np.linalg.norm(n[~bad], axis=-1), 1.0, atol=1e-6)
    assert np.all(normals_from_depth(np.zeros((H, W)), 10.0, 10.0, 5.0, 4.0) == 0)


def test_h5_opened_lazily_once_and_source_pickles(nyu: tuple[Path, dict]) -> None:
    root = nyu[0]
    (root / "nyu_depth_v2_labeled.mat").rename(root / "elsewhere.mat")
    src = NyuDepthV2(root)  # construction touches no file
    (root / "elsewhere.mat").rename(root / "nyu_depth_v2_labeled.mat")
    ref = src.list("test")[0]
    first = src.load(ref)
    handle = src._h5()
    src.load(ref)
    assert src._h5() is handle  # opened once
    clone = pickle.loads(pickle.dumps(src))  # the open handle is not pickled
    np.testing.assert_array_equal(clone.load(ref)["depth"], first["depth"])
    assert clone._h5() is not handle
    src._pid = -1  # as if forked: this process opens its own handle
    assert src._h5() is not handle


def _raises(fn, path: Path) -> SampleError:
    with pytest.raises(SampleError) as info:
        fn()
    assert str(info.value).startswith(str(path)), str(info.value)
    return info.value


def test_missing_files(nyu: tuple[Path, dict]) -> None:
    root = nyu[0]
    src = NyuDepthV2(root)
    ref = src.list("train")[0]
    (root / "classMapping40.mat").unlink()
    _raises(lambda: src.load(ref), root / "classMapping40.mat")
    (root / "nyu_depth_v2_labeled.mat").unlink()
    _raises(lambda: src.list("train"), root / "nyu_depth_v2_labeled.mat")
    _raises(lambda: NyuDepthV2(root).load(ref), root / "nyu_depth_v2_labeled.mat")
    (root / "splits.mat").unlink()
    _raises(lambda: src.list("test"), root / "splits.mat")


def test_corrupt_files(nyu: tuple[Path, dict]) -> None:
    root = nyu[0]
    ref = NyuDepthV2(root).list("train")[0]
    (root / "nyu_depth_v2_labeled.mat").write_bytes(b"not an hdf5 file" * 64)
    assert "HDF5" in str(_raises(lambda: NyuDepthV2(root).load(ref), root / "nyu_depth_v2_labeled.mat"))
    (root / "splits.mat").write_bytes(b"\x00garbage" * 40)
    _raises(lambda: NyuDepthV2(root).list("train"), root / "splits.mat")


def test_bad_contents(nyu: tuple[Path, dict]) -> None:
    root, data = nyu
    labels = data["labels"].copy()
    labels[0, 0, 0] = 895
    write_v73(
        root / "nyu_depth_v2_labeled.mat",
        images=data["rgb"].transpose(0, 3, 2, 1),
        depths=data["depth"].transpose(0, 2, 1),
        labels=labels.transpose(0, 2, 1),
    )
    ref = NyuDepthV2(root).list("train")[0]
    assert "895" in str(_raises(lambda: NyuDepthV2(root).load(ref), root / "nyu_depth_v2_labeled.mat"))
    mapping = root / "classMapping40.mat"
    scipy.io.savemat(mapping, {"mapClass": mapclass()[:, :40]})
    src = NyuDepthV2(root)
    assert "894" in str(_raises(lambda: src.load(ref), mapping))
    scipy.io.savemat(mapping, {"mapClass": mapclass() + 1})  # ids up to 41
    _raises(lambda: NyuDepthV2(root).load(ref), mapping)
    scipy.io.savemat(mapping, {"mapClass": mapclass()})
    out_of_range = SampleRef("nyu_0004", "train", {"mat": ""}, 3)
    _raises(lambda: NyuDepthV2(root).load(out_of_range), root / "nyu_depth_v2_labeled.mat")
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1.0], [1.0]]), "testNdxs": np.array([[0.0]])})
    assert "repeats" in str(_raises(lambda: NyuDepthV2(root).list("train"), root / "splits.mat"))
    assert "1-based" in str(_raises(lambda: NyuDepthV2(root).list("test"), root / "splits.mat"))
