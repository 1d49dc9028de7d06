"""`vista train`: train a model in this process on the configured data and report val metrics.

Evaluates before and after training so the gain is visible; writes ``<out_dir>/last.pt`` and
``<out_dir>/metrics.json``. (Distributed training through Ray Train builds on the same engine.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.utils.data import DataLoader

from vista.checkpoint import save_checkpoint
from vista.config import Params
from vista.data.sources.synthetic import SyntheticConfig
from vista.data.torch_dataset import SyntheticDataset
from vista.engine import build_optimizer, evaluate, poly_schedule, train_one_epoch
from vista.losses import MultiTaskLoss
from vista.metrics import TaskMetrics
from vista.models import create_model
from vista.visualize import colorize_depth, colorize_normals, colorize_seg, denormalize, panel


def build_model(params: Params) -> torch.nn.Module:
    m = params.model
    return create_model(
        m.name,
        tasks=m.tasks,
        num_classes=m.num_classes,
        max_depth=m.max_depth,
        pretrained=m.pretrained,
        output_stride=m.output_stride,
        width=m.width,
        decoder_channels=m.decoder_channels,
        aux_head=m.aux_head,
        attention=m.attention.overrides(),
    )


def build_loaders(params: Params) -> tuple[DataLoader, DataLoader]:
    d, t = params.data, params.train
    cfg = SyntheticConfig(height=d.image_size[0], width=d.image_size[1], seed=d.seed)
    gen = torch.Generator().manual_seed(t.seed)
    train = DataLoader(
        SyntheticDataset(cfg, d.num_train, "train"),
        t.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=t.num_workers,
        generator=gen,
    )
    val = DataLoader(SyntheticDataset(cfg, d.num_val, "val"), t.batch_size, num_workers=t.num_workers)
    if len(train) == 0:
        raise ValueError(f"data.num_train={d.num_train} < train.batch_size={t.batch_size}: no full batch to train on")
    return train, val


@torch.no_grad()
def save_samples(model: torch.nn.Module, loader: DataLoader, params: Params, device: torch.device, path: Path) -> None:
    """One row per val image: input, then prediction and ground truth of each task."""
    model.eval()
    batch = next(iter(loader))
    pred = model(batch["rgb"][:4].to(device))
    m = params.model
    rows = []
    for i in range(pred[m.tasks[0]].shape[0]):
        image = denormalize(batch["rgb"][i])
        row = [image]
        if "depth" in pred:
            row += [colorize_depth(pred["depth"][i], m.max_depth), colorize_depth(batch["depth"][i], m.max_depth)]
        if "seg" in pred:
            row += [
                colorize_seg(pred["seg"][i], m.num_classes, image),
                colorize_seg(batch["seg"][i], m.num_classes, image),
            ]
        if "normal" in pred:
            row += [colorize_normals(pred["normal"][i]), colorize_normals(batch["normal"][i])]
        rows.append(panel(row))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    """Train per ``params``; returns ``{"initial": metrics, "final": metrics, "history": [...]}``."""
    console = console or Console()
    t = params.train
    torch.manual_seed(t.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(params).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader, val_loader = build_loaders(params)
    opt = build_optimizer(model, t.optimizer, t.lr, t.lr_mult, t.weight_decay, t.momentum, t.eps)
    sched = poly_schedule(opt, t.epochs * len(train_loader), t.poly_power, t.min_lr_ratio)
    loss_fn = MultiTaskLoss(t.loss_weights, params.data.ignore_index, t.aux_weight, t.normal_loss)
    metrics = TaskMetrics(
        params.model.tasks, params.model.num_classes, params.data.ignore_index, params.model.max_depth
    )
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"[bold]{params.model.name}[/] ({n_params / 1e6:.1f} M params) on {device}, "
        f"{len(train_loader.dataset)} train / {len(val_loader.dataset)} val samples"
    )

    start = time.perf_counter()
    initial = evaluate(model, val_loader, metrics, device, amp=t.amp, channels_last=t.channels_last)
    history = []
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        for epoch in range(1, t.epochs + 1):
            task = progress.add_task("train", total=len(train_loader), epoch=f"{epoch}/{t.epochs}", loss=float("nan"))
            losses = train_one_epoch(
                model,
                train_loader,
                opt,
                loss_fn,
                device,
                sched,
                amp=t.amp,
                channels_last=t.channels_last,
                on_step=lambda _s, loss, task=task: progress.update(task, advance=1, loss=loss),
            )
            val = evaluate(model, val_loader, metrics, device, amp=t.amp, channels_last=t.channels_last)
            history.append({"epoch": epoch, **{f"train/{k}": v for k, v in losses.items()}, **val})
    final = history[-1] if history else initial
    out = Path(t.out_dir)
    save_checkpoint(out / "last.pt", model, opt, sched, epoch=t.epochs, params=params.model_dump(mode="json"))
    result = {
        "initial": initial,
        "final": {k: v for k, v in final.items() if k.startswith("val/")},
        "history": history,
        "wall_s": time.perf_counter() - start,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    save_samples(model, val_loader, params, device, out / "samples.png")

    table = Table("metric", "at init", "after training", title=f"val metrics ({result['wall_s']:.0f} s)")
    for k, v in initial.items():
        table.add_row(k, f"{v:.4f}", f"{result['final'][k]:.4f}")
    console.print(table)
    console.print(f"checkpoint: {out / 'last.pt'}  metrics: {out / 'metrics.json'}  predictions: {out / 'samples.png'}")
    return result
