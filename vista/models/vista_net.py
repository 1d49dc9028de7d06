"""VISTA-Net and its baselines: backbone -> neck (VISTA attention | plain | CBAM) -> decoder -> heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from timm.layers import create_attn
from torch import Tensor, nn

from .attention import StructuredAttention, attention_config
from .backbone import Backbone
from .heads import AuxSegHead, Decoder, TaskHeads
from .layers import conv_bn_relu, rescale_input
from .registry import list_models, register_builder


@dataclass(frozen=True)
class ModelConfig:
    """What ``create_model`` builds.

    Args:
        backbone: timm backbone name (ResNets; MobileNetV3 / EfficientNet, see ``backbone.BACKBONES``).
        neck: ``vista`` (structured attention), ``baseline`` (no attention) or ``cbam`` (timm's CBAM on
            the same projected feature the attention receives).
        grid: the backbone feature whose grid the neck works on: ``c2`` (stride 8) or ``c3`` (stride 16
            at output stride 16, a quarter of the pixels). For ``vista`` it sets the default senders
            (``c2, c3, c4`` or ``c3, c4``); ``baseline``/``cbam`` resize the projected c4 to it.
        attention_preset: ``paper`` or ``official`` (``vista`` neck only).
        attention: overrides of the preset (any :class:`~vista.models.attention.AttentionConfig` field).
        width: channels of the projected features (attention width ``C``).
        output_stride: backbone output stride (8, 16, 32).
        tasks: subset of ``depth``, ``seg``, ``normal``.
        aux_head: add an auxiliary segmentation head on c3 (returned as ``seg_aux`` in training).
        input_scale: inference resolution: in eval mode the network sees its input resized by this factor
            (bilinear, antialiased) and returns outputs at the input's size. Training is unaffected: there
            the loader's random scale and crop set what the network sees.
    """

    backbone: str = "resnet50"
    neck: str = "vista"
    grid: str = "c2"
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
    input_scale: float = 1.0


class ProjectedNeck(nn.Module):
    """The receiver path without messages: project c4 to ``width`` on the c2 grid, optional attention."""

    def __init__(self, in_channels: int, width: int, attn: str | None = None, grid: int = 0) -> None:
        super().__init__()
        self.proj = conv_bn_relu(in_channels, width)
        self.attn = create_attn(attn, width) if attn else nn.Identity()
        self.out_channels = width
        self.grid = grid  # index of the feature (c2, c3, c4) whose grid the output takes

    def forward(self, feats: list[Tensor]) -> Tensor:
        y = self.proj(feats[-1])
        size = feats[self.grid].shape[-2:]
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="nearest")
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
        if not 0 < cfg.input_scale <= 4:
            raise ValueError(f"input_scale={cfg.input_scale!r}: must be in (0, 4]")
        self.backbone = Backbone(cfg.backbone, cfg.output_stride, cfg.pretrained)
        c1, c2, c3, c4 = self.backbone.channels
        self.neck: nn.Module
        grids = ("c2", "c3")
        if cfg.grid not in grids:
            raise ValueError(f"grid={cfg.grid!r}: choose one of {grids}")
        if cfg.neck == "vista":
            overrides = {"width": cfg.width, **cfg.attention}
            if cfg.grid == "c3":
                overrides.setdefault("senders", ("c3", "c4"))
            self.neck = StructuredAttention(
                attention_config(cfg.attention_preset, in_channels=(c2, c3, c4), **overrides)
            )
        elif cfg.neck in ("baseline", "cbam"):
            attn = "cbam" if cfg.neck == "cbam" else None
            self.neck = ProjectedNeck(c4, cfg.width, attn, grids.index(cfg.grid))
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
        size = (x.shape[-2], x.shape[-1])  # outputs come back at the input's size
        c1, c2, c3, c4 = self.backbone(x if self.training else rescale_input(x, self.cfg.input_scale))
        fused = self.neck([c2, c3, c4])
        out = self.heads(self.decoder(fused, c1), size)
        if self.aux is not None and self.training:
            out["seg_aux"] = self.aux(c3, size)
        return out


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_CONFIGS: dict[str, dict[str, Any]] = {}  # the registered defaults of each VISTA-Net / baseline name
_DEPTHS = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r101": "resnet101"}


def register_model(name: str, **defaults: Any) -> None:
    """Register ``name`` as a :class:`ModelConfig` with ``defaults``."""
    unknown = sorted(set(defaults) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"register_model({name!r}): unknown option(s) {unknown}")
    _CONFIGS[name] = defaults
    register_builder(name, lambda **overrides: VistaNet(model_config(name, **overrides)))


for _tag, _bb in _DEPTHS.items():
    _width = 256 if _tag in ("r18", "r34") else 512
    register_model(f"vista_{_tag}", backbone=_bb, neck="vista", width=_width)
    register_model(f"baseline_{_tag}", backbone=_bb, neck="baseline", width=_width)
    register_model(f"cbam_{_tag}", backbone=_bb, neck="cbam", width=_width)
# MobileNetV3-Large (timm) at output stride 16, the neck on the stride-16 grid (c3, c4): fast on CPUs.
for _neck in ("vista", "baseline", "cbam"):
    register_model(
        f"{_neck}_mnv3",
        backbone="mobilenetv3_large_100",
        neck=_neck,
        grid="c3",
        width=96,
        output_stride=16,
        decoder_channels=64,
    )
# The official module on ResNet-101: attention replaces layer4 (stride 32 output, 2048 channels).
register_model(
    "vista_official_r101", backbone="resnet101", neck="vista", attention_preset="official", width=512, output_stride=32
)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a registered VISTA-Net/baseline name with ``overrides`` applied
    (``None`` keeps the registered value; ``attention`` overrides merge into the registered ones)."""
    if name not in _CONFIGS:
        raise ValueError(f"model {name!r}: choose one of {list_models()}")
    known = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "tasks" in clean:
        clean["tasks"] = tuple(clean["tasks"])
    defaults = _CONFIGS[name]
    if "attention" in clean:
        clean["attention"] = {**defaults.get("attention", {}), **clean["attention"]}
    return ModelConfig(**{**defaults, **clean})
