"""The one model registry: every network registers a builder under its name here (VISTA-Net and its
baselines in :mod:`vista.models.vista_net`, peers in :mod:`vista.models.peers`); :func:`create_model`
builds any of them by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_builder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Register ``builder(**overrides) -> nn.Module`` as model ``name``."""
    _BUILDERS[name] = builder


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("vista_r18", tasks=("depth", "seg"), num_classes=12)``.

    Args:
        name: one of :func:`list_models` (VISTA-Net, ``baseline_*``, ``cbam_*``, or a peer such as
            ``lraspp_mnv3``, which ignores the neck/decoder options).
        **overrides: the model's options (VISTA-Net: :class:`~vista.models.vista_net.ModelConfig` fields);
            ``None`` values keep the registered default.
    """
    if name not in _BUILDERS:
        raise ValueError(f"model {name!r}: choose one of {list_models()}")
    return _BUILDERS[name](**overrides)
