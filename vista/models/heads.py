"""Decoder and task heads: fused features (+ the stride-4 skip) -> per-task outputs at input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv_bn_relu

TASK_CHANNELS = {"depth": 1, "normal": 3}


class Decoder(nn.Module):
    """DeepLabv3+-style decoder: neck features upsampled to the stride-4 skip, concatenated, refined."""

    def __init__(self, in_channels: int, skip_channels: int, channels: int = 128) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, channels, 1)
        self.skip = conv_bn_relu(skip_channels, 48, 1)
        self.fuse = nn.Sequential(conv_bn_relu(channels + 48, channels), conv_bn_relu(channels, channels))
        self.out_channels = channels

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.reduce(x)  # (B, D, h, w)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.skip(skip)], dim=1))  # (B, D, H/4, W/4)


class TaskHeads(nn.Module):
    """One 3×3 conv + 1×1 predictor per task, upsampled to the input size.

    ``depth``: ``max_depth · σ(·)`` (B, 1, H, W); ``seg``: K logits (B, K, H, W);
    ``normal``: unit vectors (B, 3, H, W).
    """

    def __init__(self, in_channels: int, tasks: tuple[str, ...], num_classes: int, max_depth: float) -> None:
        super().__init__()
        self.tasks = tasks
        self.max_depth = max_depth
        self.heads = nn.ModuleDict(
            {
                t: nn.Sequential(
                    conv_bn_relu(in_channels, in_channels),
                    nn.Conv2d(in_channels, num_classes if t == "seg" else TASK_CHANNELS[t], 1),
                )
                for t in tasks
            }
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        out = {}
        for t, head in self.heads.items():
            y = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
            if t == "depth":
                y = self.max_depth * torch.sigmoid(y)
            elif t == "normal":
                y = F.normalize(y, dim=1, eps=1e-6)
            out[t] = y
        return out


class AuxSegHead(nn.Module):
    """FCN auxiliary segmentation head on the stride-16 feature (training only)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, channels), nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1)
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.body(x), size=size, mode="bilinear", align_corners=False)
