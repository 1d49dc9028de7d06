"""Stage `evaluate`: the best model on the evaluation shards -> eval/metrics.json and DVC plots.

Writes exactly:
- ``eval/metrics.json``: ``{split: {task: {metric: value}}}`` (DVC metrics);
- ``eval/plots/history.csv``: val metrics of the training run at each evaluated epoch, with the training
  wall-clock so far (from the model card);
- ``eval/plots/confusion.csv``: segmentation confusion matrix as ``actual,predicted,count`` rows.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vista.checkpoint import build_model
from vista.config import Params
from vista.data import shards_location
from vista.data.webdata import eval_loader
from vista.engine import evaluate
from vista.protocol import task_metrics

EVAL_DIR = Path("eval")


def nest(flat: dict[str, float]) -> dict[str, Any]:
    """``{"val/seg/miou": x}`` -> ``{"val": {"seg": {"miou": x}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    split = params.eval.split
    models = Path(params.train.models_dir)
    best = models / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best}: no trained model (run `vista train` or `dvc repro train`)")
    state = torch.load(best, map_location="cpu", weights_only=True)
    model = build_model(params)
    model.load_state_dict(state["model"])
    metrics = task_metrics(params)
    loader = eval_loader(shards_location(params.data), split, params.train.batch_size, params.loader.num_workers)
    results = evaluate(model, loader, metrics, "cpu", split=split)

    plots = EVAL_DIR / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    (EVAL_DIR / "metrics.json").write_text(json.dumps(nest(results), indent=2, sort_keys=True) + "\n")
    card = json.loads((models / "model_card.json").read_text()) if (models / "model_card.json").is_file() else {}
    history = card.get("history", [])
    keys = sorted({k for row in history for k in row if k.startswith("val/")})
    with open(plots / "history.csv", "w", newline="") as f:  # evaluated epochs only (see train.eval_every)
        w = csv.writer(f)
        w.writerow(["epoch", "train/elapsed_s", *keys])
        for row in history:
            if any(k in row for k in keys):
                w.writerow([row["epoch"], row.get("train/elapsed_s", ""), *(row.get(k, "") for k in keys)])
    with open(plots / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted", "count"])
        if "seg" in metrics.metrics:
            cm = metrics.metrics["seg"].confusion_matrix()
            for a in range(cm.shape[0]):
                for p in range(cm.shape[1]):
                    w.writerow([a, p, int(cm[a, p])])
    console.print(f"{split}: " + ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in results.items()))
    console.print(f"metrics: {EVAL_DIR / 'metrics.json'}  plots: {plots}")
    return results
