"""VISTA-Net and its baselines: backbone -> neck (VISTA attention | plain | CBAM) -> decoder -> heads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from timm.layers import create_attn
from torch import Tensor, nn

from .attention import StructuredAttention, attention_config
from .backbone import Backbone
from .heads import AuxSegHead, Decoder, TaskHeads, conv_bn_relu


@dataclass(frozen=True)
class ModelConfig:
    """What ``create_model`` builds.

    Args:
        backbone: timm ResNet name.
        neck: ``vista`` (structured attention), ``baseline`` (no attention) or ``cbam`` (timm's CBAM on
            the same projected feature the attention receives).
        attention_preset: ``paper`` or ``official`` (``vista`` neck only).
        attention: overrides of the preset (any :class:`~vista.models.attention.AttentionConfig` field).
        width: channels of the projected features (attention width ``C``).
        output_stride: backbone output stride (8, 16, 32).
        tasks: subset of ``depth``, ``seg``, ``normal``.
        aux_head: add an auxiliary segmentation head on c3 (returned as ``seg_aux`` in training).
    """

    backbone: str = "resnet50"
    neck: str = "vista"
    attention_preset: str = "paper"
    attention: dict[str, Any] = field(default_factory=dict)
    width: int = 512
    output_stride: int = 8
    pretrained: bool = False
    tasks: tuple[str, ...] = ("depth",)
    num_classes: int = 21
    max_depth: float = 10.0
    decoder_channels: int = 128
    aux_head: bool = False


class ProjectedNeck(nn.Module):
    """The receiver path without messages: project c4 to ``width`` on the c2 grid, optional attention."""

    def __init__(self, in_channels: int, width: int, attn: str | None = None) -> None:
        super().__init__()
        self.proj = conv_bn_relu(in_channels, width)
        self.attn = create_attn(attn, width) if attn else nn.Identity()
        self.out_channels = width

    def forward(self, feats: list[Tensor]) -> Tensor:
        y = self.proj(feats[-1])
        if y.shape[-2:] != feats[0].shape[-2:]:
            y = F.interpolate(y, size=feats[0].shape[-2:], mode="nearest")
        return self.attn(y)


class VistaNet(nn.Module):
    """Dense multi-task prediction network; ``forward`` returns ``dict[str, Tensor]`` keyed by task."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tasks = tuple(cfg.tasks)
        unknown = set(self.tasks) - {"depth", "seg", "normal"}
        if unknown or not self.tasks:
            raise ValueError(f"tasks={cfg.tasks!r}: choose from depth, seg, normal")
        self.backbone = Backbone(cfg.backbone, cfg.output_stride, cfg.pretrained)
        c1, c2, c3, c4 = self.backbone.channels
        self.neck: nn.Module
        if cfg.neck == "vista":
            overrides = {"width": cfg.width, **cfg.attention}
            self.neck = StructuredAttention(
                attention_config(cfg.attention_preset, in_channels=(c2, c3, c4), **overrides)
            )
        elif cfg.neck in ("baseline", "cbam"):
            self.neck = ProjectedNeck(c4, cfg.width, "cbam" if cfg.neck == "cbam" else None)
        else:
            raise ValueError(f"neck={cfg.neck!r}: choose vista, baseline or cbam")
        self.decoder = Decoder(self.neck.out_channels, c1, cfg.decoder_channels)
        self.heads = TaskHeads(cfg.decoder_channels, self.tasks, cfg.num_classes, cfg.max_depth)
        self.aux = AuxSegHead(c3, cfg.num_classes) if (cfg.aux_head and "seg" in self.tasks) else None

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split into ``backbone`` and ``head`` (neck/attention, decoder, heads)."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in ids]}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = (x.shape[-2], x.shape[-1])
        c1, c2, c3, c4 = self.backbone(x)
        fused = self.neck([c2, c3, c4])
        out = self.heads(self.decoder(fused, c1), size)
        if self.aux is not None and self.training:
            out["seg_aux"] = self.aux(c3, size)
        return out


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., ModelConfig]] = {}
_DEPTHS = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r101": "resnet101"}


def register_model(name: str, **defaults: Any) -> None:
    """Register ``name`` as a :class:`ModelConfig` with ``defaults``."""
    _REGISTRY[name] = lambda **kw: ModelConfig(**{**defaults, **kw})


for _tag, _bb in _DEPTHS.items():
    _width = 256 if _tag in ("r18", "r34") else 512
    register_model(f"vista_{_tag}", backbone=_bb, neck="vista", width=_width)
    register_model(f"baseline_{_tag}", backbone=_bb, neck="baseline", width=_width)
    register_model(f"cbam_{_tag}", backbone=_bb, neck="cbam", width=_width)
# The official module on ResNet-101: attention replaces layer4 (stride 32 output, 2048 channels).
register_model(
    "vista_official_r101", backbone="resnet101", neck="vista", attention_preset="official", width=512, output_stride=32
)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r}: choose one of {list_models()}")
    known = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "tasks" in clean:
        clean["tasks"] = tuple(clean["tasks"])
    return _REGISTRY[name](**clean)


def create_model(name: str, **overrides: Any) -> VistaNet:
    """Build a registered model, e.g. ``create_model("vista_r18", tasks=("depth", "seg"), num_classes=12)``.

    Args:
        name: one of :func:`list_models`.
        **overrides: :class:`ModelConfig` fields; ``None`` values keep the registered default.
    """
    return VistaNet(model_config(name, **overrides))
