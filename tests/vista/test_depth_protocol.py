"""Depth evaluation as the field measures it: per-dataset caps and crops, clamped predictions, NaN when
nothing is valid — checked against values computed by hand."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from vista.config import load_params
from vista.engine import evaluate
from vista.metrics import DepthMetrics, TaskMetrics, eval_crop_mask
from vista.recipe import depth_protocol, model_max_depth, task_metrics


def test_eigen_crop_on_nyu_resolution_by_hand() -> None:
    mask = eval_crop_mask(480, 640, "eigen")
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (45, 470)
    assert (cols.min().item(), cols.max().item()) == (41, 600)
    assert mask.sum().item() == 426 * 560


def test_garg_crop_on_kitti_resolution_by_hand() -> None:
    mask = eval_crop_mask(375, 1242, "garg")
    # int(0.40810811*375)=153, int(0.99189189*375)=371, int(0.03594771*1242)=44, int(0.96405229*1242)=1197
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (153, 370)
    assert (cols.min().item(), cols.max().item()) == (44, 1196)
    assert mask.sum().item() == (371 - 153) * (1197 - 44)


def test_unknown_crop_names_the_value() -> None:
    with pytest.raises(ValueError, match="'middle'"):
        DepthMetrics(crop="middle")


def test_nyu_protocol_crop_cap_and_clamp_by_hand() -> None:
    target = torch.full((1, 1, 480, 640), 2.0)
    pred = torch.full((1, 1, 480, 640), 2.0)
    pred[..., 0, 0] = 100.0  # outside the Eigen crop: not counted
    pred[..., 100, 100] = 50.0  # inside: clamped to the 10 m cap -> |10 - 2| / 2 = 4
    target[..., 200, 200] = 12.0  # ground truth beyond the cap: not counted
    pred[..., 300, 300] = 0.0  # below the floor: clamped to 0.001
    m = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop="eigen")
    m.update(pred, target)
    r = {k: v.item() for k, v in m.compute().items()}
    n = 426 * 560 - 1
    assert r["abs_rel"] == pytest.approx((4.0 + (2.0 - 1e-3) / 2.0) / n, rel=1e-9)
    assert r["rmse"] == pytest.approx(math.sqrt((8.0**2 + (2.0 - 1e-3) ** 2) / n), rel=1e-9)
    assert r["d1"] == pytest.approx((n - 2) / n, rel=1e-12)


def test_kitti_protocol_counts_up_to_80_m() -> None:
    target = torch.full((1, 1, 375, 1242), 60.0)
    pred = torch.full((1, 1, 375, 1242), 90.0)  # every prediction beyond the cap: clamped to 80
    m = DepthMetrics(max_depth=80.0, crop="garg")
    m.update(pred, target)
    assert m.compute()["abs_rel"].item() == pytest.approx(20 / 60)
    nyu = DepthMetrics(max_depth=10.0, crop="eigen")  # the same frame under NYU's cap: nothing valid
    nyu.update(pred, target)
    assert math.isnan(nyu.compute()["abs_rel"].item())


def test_no_valid_pixel_gives_nan_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Const(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"depth": torch.ones(x.shape[0], 1, *x.shape[-2:])}

    batch = {"rgb": torch.zeros(2, 3, 8, 8), "depth": torch.zeros(2, 1, 8, 8)}  # 0 = no measurement
    with caplog.at_level(logging.WARNING, logger="vista.engine"):
        r = evaluate(Const(), [batch], TaskMetrics(("depth",)))
    assert all(math.isnan(v) for v in r.values()) and len(r) == 9
    assert "without any valid pixel" in caplog.text


def _params(dataset: str, *overrides: str):
    return load_params("params.yaml", [f"data.dataset={dataset}", "model.tasks=[depth]", *overrides])


@pytest.mark.parametrize(("dataset", "cap", "crop"), [("nyu_depth_v2", 10.0, "eigen"), ("kitti_depth", 80.0, "garg")])
def test_dataset_values_flow_into_the_model_and_the_metrics(dataset: str, cap: float, crop: str) -> None:
    from vista.recipe import build_model

    p = _params(dataset, "model.width=16", "model.decoder_channels=16")
    assert p.model.max_depth is None  # params.yaml leaves it to the dataset
    assert model_max_depth(p) == cap
    assert build_model(p).heads.max_depth == cap
    d = depth_protocol(p)
    assert (d.min_depth, d.max_depth, d.crop) == (1e-3, cap, crop)
    metric = task_metrics(p).metrics["depth"]
    assert (metric.min_depth, metric.max_depth, metric.crop) == (1e-3, cap, crop)


def test_params_override_the_dataset_protocol() -> None:
    p = _params(
        "nyu_depth_v2", "model.max_depth=20", "eval.depth_range=[0.5, 5.0]", "eval.depth_crop=none", "model.width=16"
    )
    assert model_max_depth(p) == 20.0
    d = depth_protocol(p)
    assert (d.min_depth, d.max_depth, d.crop) == (0.5, 5.0, None)
    with pytest.raises(ValueError, match=r"eval.depth_range"):
        _params("nyu_depth_v2", "eval.depth_range=[5.0, 1.0]")
