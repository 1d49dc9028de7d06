"""Checkpoints as plain dicts of tensors and builtins, loadable with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_path


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; any other module
    as it is."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int = 0,
    **extra: Any,
) -> Path:
    """Write ``{model, optimizer, scheduler, epoch, **extra}`` atomically (temp file + rename).

    ``extra`` must hold only tensors and builtins (e.g. the params dict, metrics).
    """
    path = Path(path)
    net = unwrap(model)
    state = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and restore the given objects; returns the dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} could not be read safely: {err}") from err
    if model is not None:
        unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


def read_trained(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Any]:
    """``(state, params)`` of a checkpoint that training wrote (``models/best.pt``: weights + the
    :class:`vista.config.Params` they were trained with); errors name the file."""
    from vista.config import validate_params

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model checkpoint not found (train first, or pass another model)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or "params" not in state or "model" not in state:
        raise ValueError(f"{path}: not a vista checkpoint (needs 'model' and 'params')")
    return state, validate_params(state["params"])
