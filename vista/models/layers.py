"""Layers the networks share: the conv-BN-ReLU block and the inference-time input rescale."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, *, stride: int = 1, bias: bool = False) -> nn.Sequential:
    """``k×k`` convolution (padding ``k // 2``), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def rescale_input(x: Tensor, scale: float) -> Tensor:
    """``x`` (B, 3, H, W) resized by ``scale`` (bilinear; at least 1×1), or ``x`` itself at scale 1."""
    if scale == 1.0:
        return x
    size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
