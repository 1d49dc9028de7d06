"""Backbones from timm (``features_only``): four stages c1..c4 (strides 4, 8, 16, 32 at output stride 32)."""

from __future__ import annotations

import timm
from torch import Tensor, nn

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
# light backbones with dilation support (output_stride 8/16) and a stride-4 first feature
MOBILE = ("mobilenetv3_large_100", "mobilenetv3_large_075", "efficientnet_b0", "efficientnet_lite0")
BACKBONES = RESNETS + MOBILE


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be fetched."""


class Backbone(nn.Module):
    """A timm backbone returning ``[c1, c2, c3, c4]`` (strides 4, 8, 16, 32 at ``output_stride=32``).

    Args:
        name: one of ``BACKBONES`` (ResNets; MobileNetV3 / EfficientNet for fast training).
        output_stride: 8, 16 or 32; smaller strides dilate the last stages (timm does this).
        pretrained: load ImageNet weights (downloads through timm / Hugging Face Hub on first use).
    """

    def __init__(self, name: str = "resnet50", output_stride: int = 8, pretrained: bool = False) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone {name!r}: choose one of {BACKBONES}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={output_stride!r}: choose 8, 16 or 32")
        kwargs = dict(features_only=True, out_indices=(1, 2, 3, 4), output_stride=output_stride)
        try:
            self.body = timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as err:  # network, hub or cache errors all surface here
            if not pretrained:
                raise
            raise PretrainedWeightsError(
                f"could not load pretrained weights for {name} ({type(err).__name__}: {err}). "
                "Without network access, either set model.pretrained=false, or fetch the weights once "
                "on a connected machine and point HF_HOME (or TORCH_HOME) at that cache."
            ) from err
        self.channels: list[int] = list(self.body.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)
