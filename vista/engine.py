"""The training loop in plain PyTorch (no Ray): optimiser, schedule, one epoch, evaluation.

Distributed wrappers (DDP, Ray Train) add workers and devices around these functions; nothing here
knows about them beyond optionally unwrapping ``model.module``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import unwrap
from .data.batch import SKIPPED
from .metrics import TaskMetrics

log = logging.getLogger(__name__)
Batch = Mapping[str, Tensor]


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``
    (a CUDA device that is not there is an error naming it)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n or n == 0:
            raise ValueError(f"device {spec!r}: this machine has {n} CUDA device(s)")
    return device


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-4,
    lr_mult: float = 10.0,
    weight_decay: float = 1e-2,
    momentum: float = 0.9,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Optimiser with two groups: ``backbone`` at ``lr``; attention, decoder and heads at ``lr·lr_mult``.

    Every trainable parameter sits in exactly one group (the official depth code left the attention
    module out of the optimiser; this cannot).
    """
    net = unwrap(model)
    groups = net.param_groups() if hasattr(net, "param_groups") else {"backbone": [], "head": list(net.parameters())}
    param_groups = [
        {"name": "backbone", "params": [p for p in groups["backbone"] if p.requires_grad], "lr": lr},
        {"name": "head", "params": [p for p in groups["head"] if p.requires_grad], "lr": lr * lr_mult},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    n_grouped = sum(len(g["params"]) for g in param_groups)
    n_trainable = sum(1 for p in net.parameters() if p.requires_grad)
    if n_grouped != n_trainable:
        raise RuntimeError(f"optimiser groups hold {n_grouped} parameters, the model trains {n_trainable}")
    # on CUDA one fused kernel updates every parameter (Adam/AdamW); on CPU the default (foreach) path
    fused = all(p.is_cuda for g in param_groups for p in g["params"]) or None
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, eps=eps, fused=fused)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, eps=eps, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r}: choose adamw, adam or sgd")


class TimeBudget:
    """A wall-clock budget for training, the same on every DDP rank.

    ``tick()`` (once per step) reads the clock; under ``torch.distributed`` the ranks agree on the
    largest elapsed time (one scalar all-reduce), so they stop after the same step and follow the same
    schedule. ``spent`` carries the time of earlier attempts over a resume.

    Args:
        seconds: the budget.
        spent: seconds already used (from a checkpoint).
    """

    def __init__(self, seconds: float, spent: float = 0.0) -> None:
        if seconds <= 0:
            raise ValueError(f"time budget {seconds!r} s: must be > 0")
        self.seconds = float(seconds)
        self._spent = float(spent)
        self._t0 = time.perf_counter()
        self._now = self._spent

    def tick(self) -> float:
        """Elapsed seconds (agreed over ranks); also cached for :meth:`fraction` and :meth:`exhausted`."""
        local = self._spent + time.perf_counter() - self._t0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([local], dtype=torch.float64)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            local = float(t)
        self._now = local
        return local

    def resume(self, spent: float) -> None:
        """Carry ``spent`` seconds over from a checkpoint (an earlier attempt of the same run)."""
        self._spent = self._now = float(spent)

    def restart(self) -> None:
        """Start the clock now (time before this, e.g. set-up and the evaluation at init, is not spent)."""
        self._t0 = time.perf_counter()
        self._now = self._spent

    @property
    def elapsed(self) -> float:
        return self._now

    def fraction(self) -> float:
        return min(1.0, self._now / self.seconds)

    def exhausted(self) -> bool:
        return self._now >= self.seconds


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    power: float = 0.9,
    min_lr_ratio: float = 0.0,
    warmup: float = 0.0,
    budget: TimeBudget | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay: ``lr = lr0 · (r + (1 − r)(1 − p)^power)`` with ``r = min_lr_ratio`` and progress
    ``p = step / total_steps`` — or, with a ``budget``, ``p`` = the budget's elapsed fraction, so the
    schedule ends where the time does. ``warmup``: the first fraction of ``p`` ramps linearly up to it."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        frac = budget.fraction() if budget is not None else min(step, total) / total
        decay = min_lr_ratio + (1 - min_lr_ratio) * (1 - frac) ** power
        if warmup > 0 and frac < warmup:
            ramp = (step + 1) / (total * warmup) if budget is None else frac / warmup
            decay *= min(1.0, max(ramp, 1e-3))
        return decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _skipped(batch: Batch, count: int | None) -> int | None:
    """Add the batch's dropped samples to ``count`` (``None`` while no batch has carried the list)."""
    if SKIPPED not in batch:
        return count
    return (count or 0) + len(batch[SKIPPED])


def _skipped_over_ranks(count: int | None) -> int | None:
    """The dropped samples of all ranks (``None``: no rank's loader drops samples). Every rank joins
    the sum, whatever its loader yielded, so no rank waits on a collective another one skipped."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([count or 0, count is not None], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return int(t[0]) if t[1] > 0 else None
    return count


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> dict[str, Tensor]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if k == "rgb" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Mapping[str, Tensor], Batch], tuple[Tensor, dict[str, Tensor]]],
    device: torch.device | str = "cpu",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp: bool = False,
    channels_last: bool = False,
    max_steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    budget: TimeBudget | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of the total loss and of each task loss, ``steps``
    (optimiser steps taken) and, when the loader drops bad samples, ``skipped_samples`` (over all ranks).

    Args:
        amp: bf16 autocast (CPU or CUDA); the loss is computed in float32.
        max_steps: stop after this many batches.
        on_step: called with (step, loss) after each optimiser step (progress bars, logging).
        budget: ticked after every step (before the schedule steps); the pass ends early once it is spent.

    Raises:
        FloatingPointError: the loss became NaN or inf (names the step).
    """
    device = torch.device(device)
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    skipped: int | None = None
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        skipped = _skipped(batch, skipped)
        if "rgb" not in batch:  # only dropped samples (a finite loader's end); an endless stream has none
            continue
        batch = to_device(batch, device, channels_last)
        with _autocast(device, amp):
            pred = model(batch["rgb"])
        loss, parts = loss_fn(pred, batch)
        if not torch.isfinite(loss):
            detail = {k: round(float(v), 4) for k, v in parts.items()}
            raise FloatingPointError(f"loss is {loss.item()} at step {step} (parts: {detail})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if budget is not None:
            budget.tick()
        if scheduler is not None:
            scheduler.step()
        steps += 1
        for k, v in {"loss": loss.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if on_step is not None:
            on_step(step, float(loss.detach()))
        if budget is not None and budget.exhausted():
            break
    out = {**{k: v / max(1, steps) for k, v in sums.items()}, "steps": float(steps)}
    skipped = _skipped_over_ranks(skipped)
    if skipped is not None:
        out["skipped_samples"] = float(skipped)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    metrics: TaskMetrics,
    device: torch.device | str = "cpu",
    split: str = "val",
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Metrics of ``model`` over ``loader``, keyed ``split/task/metric`` (reduced over DDP ranks), and
    ``split/skipped_samples`` when the loader drops bad samples (summed over ranks)."""
    device = torch.device(device)
    model.eval()
    metrics.reset()
    metrics.to(device)
    skipped: int | None = None
    for batch in loader:
        skipped = _skipped(batch, skipped)
        if "rgb" not in batch:  # a batch of dropped samples only
            continue
        batch = to_device(batch, device, channels_last)
        with _autocast(device, amp):
            pred = model(batch["rgb"])
        metrics.update(pred, batch)
    results = metrics.compute(split)
    bad = [k for k, v in results.items() if math.isnan(v)]
    if bad:
        log.warning("metrics without any valid pixel: %s", bad)
    skipped = _skipped_over_ranks(skipped)
    if skipped is not None:
        results[f"{split}/skipped_samples"] = float(skipped)
    return results
