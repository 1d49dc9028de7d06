"""Peer models that a user would pick instead of VISTA-Net, behind the same interface.

``lraspp_mnv3``: torchvision's LR-ASPP with a MobileNetV3-Large backbone (Howard et al., 2019), built
with ``weights=None, weights_backbone=None`` (random init) unless ``pretrained`` asks for the ImageNet
backbone. It returns ``{"seg": logits}`` like every model here and splits its parameters into
``backbone`` and ``head`` groups, so the same optimiser, schedule, loss and metrics train it.

One change to torchvision's model: its MobileNetV3 BatchNorm layers keep running statistics with
momentum 0.01 (made for ImageNet schedules of hundreds of epochs). Trained from random init for minutes,
those statistics lag far behind the weights and evaluation collapses (CamVid val after 600 s: mIoU 0.08
with the running statistics, 0.45 with batch statistics), so the peer uses PyTorch's default 0.1 —
``bn_momentum`` — like every other model here.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import rescale_input
from .registry import register_builder


class LRASPPPeer(nn.Module):
    """torchvision ``lraspp_mobilenet_v3_large`` as a segmentation-only model of this project."""

    def __init__(
        self,
        num_classes: int = 21,
        tasks: tuple[str, ...] = ("seg",),
        pretrained: bool = False,
        input_scale: float = 1.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 < input_scale <= 4:
            raise ValueError(f"input_scale={input_scale!r}: must be in (0, 4]")
        self.input_scale = input_scale
        from torchvision.models import MobileNet_V3_Large_Weights
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        if tuple(tasks) != ("seg",):
            raise ValueError(f"tasks={tuple(tasks)!r}: lraspp_mnv3 is a segmentation model; use tasks=('seg',)")
        backbone_weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained else None
        net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=backbone_weights, num_classes=num_classes)
        self.backbone, self.classifier = net.backbone, net.classifier
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        self.tasks = ("seg",)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()), "head": list(self.classifier.parameters())}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x_in = x if self.training else rescale_input(x, self.input_scale)  # inference resolution
        logits = self.classifier(self.backbone(x_in))  # (B, K, H/8, W/8)
        return {"seg": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


# options of create_model that describe VISTA-Net's neck and decoder: they do not apply to a peer
NECK_OPTIONS = ("width", "output_stride", "grid", "decoder_channels", "aux_head", "attention", "max_depth")


def create_peer(name: str, **overrides: Any) -> nn.Module:
    """Build a peer; VISTA-only options (``NECK_OPTIONS``) are accepted and ignored."""
    if name != "lraspp_mnv3":
        raise ValueError(f"peer {name!r}: choose lraspp_mnv3")
    known = {"tasks", "num_classes", "pretrained", "input_scale", *NECK_OPTIONS}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    own = ("tasks", "num_classes", "pretrained", "input_scale")
    kw = {k: v for k, v in overrides.items() if k in own and v is not None}
    if "tasks" in kw:
        kw["tasks"] = tuple(kw["tasks"])
    return LRASPPPeer(**kw)


register_builder("lraspp_mnv3", lambda **overrides: create_peer("lraspp_mnv3", **overrides))
