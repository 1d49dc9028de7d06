"""Stage `evaluate`: the best model on the evaluation shards -> eval/metrics.json and DVC plots.

Writes exactly:
- ``eval/metrics.json``: ``{split: {task: {metric: value}}}`` (DVC metrics), with segmentation's IoU per
  class under ``{split: {seg: {iou: {class name: value}}}}``;
- ``eval/plots/history.csv``: val metrics of the training run at each evaluated epoch, with the training
  wall-clock so far (from the model card);
- ``eval/plots/confusion.csv``: segmentation confusion matrix as ``actual,predicted,count`` rows.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vista.checkpoint import read_trained
from vista.config import Params, apply_override, with_overrides
from vista.data import shards_location
from vista.data.webdata import eval_loader, load_index
from vista.engine import evaluate, resolve_device
from vista.files import write_json
from vista.recipe import build_trained, model_differences, task_metrics

from .outputs import EVAL_DIR


def nest(flat: dict[str, float]) -> dict[str, Any]:
    """``{"val/seg/miou": x}`` -> ``{"val": {"seg": {"miou": x}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        apply_override(out, key, value, sep="/")
    return out


# the columns dvc.yaml draws: always in history.csv (empty for a task the model lacks), so that no plot
# definition points at a missing column (DVC drops the whole plot then)
PLOTTED = ("val/seg/miou", "val/depth/abs_rel", "val/depth/d1", "val/normal/mean")


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    """The evaluated epochs of the training history (see ``train.eval_every``) with the training
    wall-clock so far: ``epoch, train/elapsed_s`` and every ``val/...`` metric."""
    keys = sorted({k for row in history for k in row if k.startswith("val/")} | set(PLOTTED))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train/elapsed_s", *keys])
        for row in history:
            if any(k in row for k in keys):
                w.writerow([row["epoch"], row.get("train/elapsed_s", ""), *(row.get(k, "") for k in keys)])


def checkpoint_settings(best: Path, trained: Params, params: Params) -> Params:
    """The settings to evaluate ``best`` with: the checkpoint's own (the network, its output range, the
    void label), with this run's evaluation choices (``eval.*``, ``model.input_scale``, where the shards
    are and what to do with a bad sample in them, batch size and loader workers). Settings that would
    change the network are refused, naming them."""
    changed = model_differences(trained, params)
    if changed:
        what = "; ".join(f"{k}: trained with {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in changed.items()))
        raise ValueError(
            f"{best} was trained with other settings than these ({what}); evaluation uses the model as trained: "
            "retrain (`vista train`), or evaluate without those overrides"
        )
    return with_overrides(
        trained,
        {
            "eval": params.eval.model_dump(mode="json"),
            "model.input_scale": params.model.input_scale,
            "data.prepared_dir": params.data.prepared_dir,
            "data.shards_dir": params.data.shards_dir,
            "data.on_bad_sample": params.data.on_bad_sample,
            "train.batch_size": params.train.batch_size,
            "train.models_dir": params.train.models_dir,
            "loader.num_workers": params.loader.num_workers,
        },
    )


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    split = params.eval.split
    models = Path(params.train.models_dir)
    best = models / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best}: no trained model (run `vista train` or `dvc repro train`)")
    state, trained = read_trained(best)
    params = checkpoint_settings(best, trained, params)
    device = resolve_device(params.eval.device)
    model = build_trained(best, state, params).to(device)
    shards = shards_location(params.data)
    metrics = task_metrics(params, load_index(shards).get("classes"))
    loader = eval_loader(
        shards,
        split,
        params.train.batch_size,
        params.loader.num_workers,
        on_bad_sample=params.data.on_bad_sample,
        pin_memory=device.type == "cuda",
    )
    results = evaluate(model, loader, metrics, device, split=split)

    plots = EVAL_DIR / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    write_json(EVAL_DIR / "metrics.json", nest(results))
    card = json.loads((models / "model_card.json").read_text()) if (models / "model_card.json").is_file() else {}
    write_history(card.get("history", []), plots / "history.csv")
    with open(plots / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted", "count"])
        if "seg" in metrics.metrics:
            cm = metrics.metrics["seg"].confusion_matrix()
            for a in range(cm.shape[0]):
                for p in range(cm.shape[1]):
                    w.writerow([a, p, int(cm[a, p])])
    per_class = {k.rsplit("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{split}/seg/iou/")}
    summary = {k: v for k, v in results.items() if not k.startswith(f"{split}/seg/iou/")}
    console.print(f"{split}: " + ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in summary.items()))
    if per_class:
        table = Table("class", "IoU", title=f"{split} IoU per class")
        for name, v in sorted(per_class.items(), key=lambda kv: -kv[1]):
            table.add_row(name, f"{v:.4f}")
        console.print(table)
    console.print(f"metrics: {EVAL_DIR / 'metrics.json'}  plots: {plots}")
    return results
