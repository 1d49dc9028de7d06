"""Metrics against values computed by hand, with ignore index and invalid depth."""

from __future__ import annotations

import math

import pytest
import torch

from vista.metrics import DepthMetrics, NormalMetrics, SegMetrics, TaskMetrics


def logits_for(pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()


def test_seg_miou_and_pixel_accuracy_by_hand() -> None:
    # 3 classes, 255 = ignore. target / prediction (one image 2x4):
    target = torch.tensor([[[0, 0, 1, 1], [2, 255, 255, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]]])
    m = SegMetrics(3, ignore_index=255)
    m.update(logits_for(pred, 3), target)
    r = m.compute()
    # counted pixels: 6 (two ignored). correct: (0,0),(0,2),(0,3),(1,0) -> 4/6
    assert r["pixel_acc"].item() == pytest.approx(4 / 6)
    # class 0: tp 1, target 2, pred 2 -> IoU 1/3 ; class 1: tp 2, target 3, pred 3 -> 2/4 ;
    # class 2: tp 1, target 1, pred 1 (predictions on ignored pixels do not count) -> 1/1
    assert r["miou"].item() == pytest.approx((1 / 3 + 2 / 4 + 1) / 3)


def test_seg_iou_per_class_by_hand_under_the_class_names() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 255, 255, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]]])
    m = SegMetrics(4, ignore_index=255, class_names=["road", "sign/symbol", "sky"])
    m.update(logits_for(pred, 4), target)
    r = {k: v.item() for k, v in m.compute().items()}
    # class 3 is in neither target nor prediction: no IoU, no key; it has no name either (id 3)
    assert set(r) == {"miou", "pixel_acc", "iou/road", "iou/sign_symbol", "iou/sky"}
    assert r["iou/road"] == pytest.approx(1 / 3)
    assert r["iou/sign_symbol"] == pytest.approx(2 / 4)  # "/" would nest the metric key: replaced
    assert r["iou/sky"] == pytest.approx(1.0)
    assert r["miou"] == pytest.approx(sum(r[k] for k in r if k.startswith("iou/")) / 3)


def test_seg_per_class_keys_are_ids_without_names_and_collect_prefixes_them() -> None:
    t = torch.tensor([[[0, 2]]])
    tm = TaskMetrics(("seg",), num_classes=3)
    tm.update({"seg": logits_for(t, 3)}, {"seg": t})
    assert tm.compute("val") == {
        "val/seg/miou": 1.0,
        "val/seg/pixel_acc": 1.0,
        "val/seg/iou/0": 1.0,
        "val/seg/iou/2": 1.0,
    }


def test_seg_class_names_that_collide_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"\['a_b'\] occur more than once"):
        SegMetrics(2, class_names=["a/b", "a_b"])


def test_seg_classes_absent_everywhere_do_not_count() -> None:
    m = SegMetrics(5, ignore_index=255)
    t = torch.tensor([[[0, 1]]])
    m.update(logits_for(t, 5), t)
    assert m.compute()["miou"].item() == 1.0


def test_seg_accumulates_over_batches_like_one_batch() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 4, (4, 8, 8), generator=g)
    p = torch.randn(4, 4, 8, 8, generator=g)
    one, two = SegMetrics(4), SegMetrics(4)
    one.update(p, t)
    two.update(p[:2], t[:2])
    two.update(p[2:], t[2:])
    assert one.compute() == two.compute()


def test_depth_metrics_by_hand_with_invalid_pixels() -> None:
    target = torch.tensor([[[[2.0, 4.0], [0.0, math.inf]]]])  # two invalid pixels
    pred = torch.tensor([[[[1.0, 5.0], [7.0, 9.0]]]])
    m = DepthMetrics()
    m.update(pred, target)
    r = {k: v.item() for k, v in m.compute().items()}
    y, yh = torch.tensor([2.0, 4.0], dtype=torch.float64), torch.tensor([1.0, 5.0], dtype=torch.float64)
    assert r["abs_rel"] == pytest.approx((0.5 + 0.25) / 2)
    assert r["sq_rel"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert r["rmse"] == pytest.approx(math.sqrt((1 + 1) / 2))
    d = torch.log(yh) - torch.log(y)
    assert r["rmse_log"] == pytest.approx(d.square().mean().sqrt().item())
    assert r["log10"] == pytest.approx((torch.log10(yh) - torch.log10(y)).abs().mean().item())
    assert r["silog"] == pytest.approx(100 * math.sqrt(d.square().mean() - d.mean() ** 2))
    # ratios: 2.0 and 1.25 -> d1: 1.25 < 1.25 is False -> 0 ; d2: 1.25 < 1.5625 -> 1/2 ; d3: 2.0 < 1.953 -> 1/2
    assert (r["d1"], r["d2"], r["d3"]) == (0.0, 0.5, 0.5)


def test_depth_metrics_average_per_image_and_skip_empty_images() -> None:
    target = torch.tensor([[[[1.0]]], [[[2.0]]], [[[0.0]]]])
    pred = torch.tensor([[[[2.0]]], [[[2.0]]], [[[5.0]]]])
    m = DepthMetrics()
    m.update(pred, target)
    assert m.compute()["abs_rel"].item() == pytest.approx((1.0 + 0.0) / 2)


def test_normal_metrics_by_hand() -> None:
    angles = torch.tensor([0.0, 10.0, 20.0, 40.0, 50.0])
    rad = torch.deg2rad(angles)
    pred = torch.stack([torch.sin(rad), torch.zeros(5), torch.cos(rad)]).view(1, 3, 1, 5)
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 5).clone()
    target[..., 0, 4] = 0  # the 50 degree pixel has no ground truth
    m = NormalMetrics()
    m.update(pred, target)
    r = {k: v.item() for k, v in m.compute().items()}
    assert r["mean"] == pytest.approx(70 / 4, abs=1e-4)
    assert r["median"] == pytest.approx(10.0, abs=0.01)  # lower median of 0, 10, 20, 40
    assert (r["a11"], r["a22"], r["a30"]) == (0.5, 0.75, 0.75)


def test_task_metrics_keys_are_split_task_metric() -> None:
    tm = TaskMetrics(("depth", "seg", "normal"), num_classes=3)
    b = {
        "depth": torch.rand(1, 1, 4, 4) + 1,
        "seg": torch.randint(0, 3, (1, 4, 4)),
        "normal": torch.nn.functional.normalize(torch.randn(1, 3, 4, 4), dim=1),
    }
    tm.update({"depth": b["depth"], "seg": logits_for(b["seg"], 3), "normal": b["normal"]}, b)
    r = tm.compute("val")
    assert r["val/seg/miou"] == 1.0 and r["val/depth/abs_rel"] == 0.0 and r["val/normal/mean"] < 0.01
    per_class = [k for k in r if k.startswith("val/seg/iou/")]  # split/seg/iou/<class>: one level deeper
    assert per_class and all(k.count("/") == 2 for k in r if k not in per_class)
