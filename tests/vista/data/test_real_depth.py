"""Real depth from Middlebury 2014 "Motorcycle" (shipped in scikit-image's wheel): I/O, masks, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vista.data.batch import valid_depth
from vista.data.codec import decode_sample, encode_sample
from vista.data.transforms import TrainTransform, _hflip, _resize
from vista.metrics import DepthMetrics

# calibration of the down-sampled pair, from the docstring of skimage.data.stereo_motorcycle
FOCAL_PX, DOFFS_PX, BASELINE_MM = 994.978, 31.086, 193.001


@pytest.fixture(scope="module")
def motorcycle() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import stereo_motorcycle

    left, _, disp = stereo_motorcycle()
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = BASELINE_MM * FOCAL_PX / (disp + DOFFS_PX) / 1000.0  # metres
    depth = np.where(np.isfinite(disp), depth, np.inf).astype(np.float32)  # invalid pixels: +inf
    return left, depth


def test_scene_has_plausible_metric_depth(motorcycle) -> None:
    _, depth = motorcycle
    valid = np.isfinite(depth)
    assert 0.05 < 1 - valid.mean() < 0.5  # some pixels lack ground truth
    assert 1.0 < np.median(depth[valid]) < 5.0  # a motorcycle a few metres away
    assert valid_depth(torch.from_numpy(depth)).numpy().tolist() == valid.tolist()


def test_depth_png_round_trip_within_quantisation(motorcycle) -> None:
    rgb, depth = motorcycle
    enc = encode_sample({"key": "motorcycle", "rgb": rgb, "depth": depth})
    assert "depth.png" in enc  # fits 16-bit millimetres
    dec = decode_sample(enc)
    valid = np.isfinite(depth)
    assert np.array_equal(dec["rgb"], rgb)
    assert np.abs(dec["depth"][valid] - depth[valid]).max() <= 0.0005 + 1e-6
    assert (dec["depth"][~valid] == 0).all()  # invalid -> 0 in storage


def test_depth_beyond_16bit_millimetres_is_stored_as_npy() -> None:
    depth = np.array([[70.123, 0.5], [np.inf, 0.0]], np.float32)
    enc = encode_sample({"key": "far", "rgb": np.zeros((2, 2, 3), np.uint8), "depth": depth})
    assert "depth.npy" in enc and "depth.png" not in enc
    dec = decode_sample(enc)
    assert dec["depth"].tolist() == [[pytest.approx(70.123), 0.5], [0.0, 0.0]]


def test_metrics_on_a_real_scene(motorcycle) -> None:
    _, depth = motorcycle
    target = torch.from_numpy(depth)[None, None]
    valid = torch.isfinite(target)
    m = DepthMetrics()
    m.update(torch.where(valid, target * 1.1, torch.ones_like(target)), target)
    r = {k: v.item() for k, v in m.compute().items()}
    assert r["abs_rel"] == pytest.approx(0.1, rel=1e-5)
    assert r["d1"] == 1.0 and r["silog"] == pytest.approx(0.0, abs=1e-3)
    assert r["rmse_log"] == pytest.approx(np.log(1.1), rel=1e-5)


def test_paired_transforms_keep_depth_valid_aware(motorcycle) -> None:
    rgb, depth = motorcycle
    s = {
        "rgb": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        "depth": torch.from_numpy(np.where(np.isfinite(depth), depth, 0))[None],
        "seg": (torch.from_numpy(depth) > 2).long(),
        "normal": torch.nn.functional.normalize(torch.randn(3, *depth.shape), dim=0),
    }
    small = _resize(s, (123, 201))
    # nearest: every resized depth is one of the original values (no blending into invalid zeros)
    assert set(np.unique(small["depth"].numpy())) <= set(np.unique(s["depth"].numpy()))
    assert set(np.unique(small["seg"].numpy())) <= {0, 1}
    flipped = _hflip(s)
    assert torch.equal(flipped["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(flipped["normal"][1:], s["normal"][1:].flip(-1))
    out = TrainTransform(
        crop_size=(600, 800), scale_range=(1.0, 1.0), ignore_index=255, generator=torch.Generator().manual_seed(0)
    )(s)
    assert out["rgb"].shape == (3, 600, 800)
    assert (out["seg"][500:] == 255).all() and (out["depth"][:, 500:] == 0).all()  # padding: ignore / invalid
