"""Losses against hand-computed values, masks and ignore index."""

from __future__ import annotations

import math

import pytest
import torch

from vista.losses import MultiTaskLoss, normal_loss, silog_loss


def test_silog_by_hand_ignores_invalid_pixels() -> None:
    target = torch.tensor([[[[1.0, 2.0], [0.0, math.nan]]]])
    pred = torch.tensor([[[[2.0, 2.0], [5.0, 5.0]]]])
    d = torch.tensor([math.log(2.0), 0.0])
    expected = 10 * math.sqrt(d.square().mean() - 0.85 * d.mean() ** 2)
    assert silog_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_silog_is_zero_for_perfect_prediction_and_has_gradient() -> None:
    target = torch.rand(2, 1, 4, 4) + 0.5
    pred = target.clone().requires_grad_()
    assert silog_loss(pred, target).item() < 1e-3
    no_valid = silog_loss(pred, torch.zeros_like(target))
    no_valid.backward()
    assert no_valid.item() == 0 and pred.grad is not None


def test_normal_loss_known_angle() -> None:
    a = math.radians(30)
    pred = torch.tensor([math.sin(a), 0.0, math.cos(a)]).view(1, 3, 1, 1)
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert normal_loss(pred, target, "acos").item() == pytest.approx(a, rel=1e-4)
    assert normal_loss(pred, target, "cosine").item() == pytest.approx(1 - math.cos(a), rel=1e-4)
    with pytest.raises(ValueError, match="kind='l2'"):
        normal_loss(pred, target, "l2")


def test_multitask_ce_ignores_index_and_weights_aux() -> None:
    logits = torch.randn(1, 3, 2, 2)
    seg = torch.tensor([[[0, 1], [255, 255]]])
    loss = MultiTaskLoss({"seg": 1.0}, ignore_index=255, aux_weight=0.2)
    total, parts = loss({"seg": logits, "seg_aux": logits}, {"seg": seg})
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(2)[..., :2].permute(0, 2, 1).reshape(2, 3), torch.tensor([0, 1])
    )
    assert parts["seg"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert total.item() == pytest.approx(1.2 * ce.item(), rel=1e-5)
    all_ignored, _ = loss({"seg": logits.requires_grad_()}, {"seg": torch.full((1, 2, 2), 255)})
    all_ignored.backward()
    assert all_ignored.item() == 0 and torch.isfinite(logits.grad).all()
