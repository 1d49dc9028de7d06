"""Stage `train`: the settings' model trained with Ray Train (:mod:`pipelines.ray_train`) over the shards,
tracked in one MLflow run.

The best checkpoint (``train.best_metric``/``best_mode``) is copied to ``models/best.pt`` with
``models/model_card.json`` and a panel of val predictions ``models/samples.png``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from vista import tracking
from vista.config import Params
from vista.data.webdata import data_version
from vista.recipe import build_model, preflight, run_name
from vista.visualize import save_samples

from .ray_train import CHECKPOINT_FILE, best_checkpoint_state, checkpoint_files, failure_reason, fit, require_shards


def run(
    params: Params, console: Console | None = None, tags: dict[str, str] | None = None, verbose: bool = False
) -> dict[str, Any]:
    """Train, then write ``models/best.pt``, ``models/model_card.json`` and ``models/samples.png``.

    Args:
        console: one line per epoch, then the val metrics table.
        tags: extra MLflow tags of the run (e.g. the study it belongs to).
        verbose: Ray's INFO logs and the workers' output on the console too (:func:`ray_logging`).
    """
    console = console or Console()
    t = params.train
    preflight(params)
    console.print(
        f"[bold]{params.model.name}[/] on {params.data.dataset}: {t.workers} Ray Train worker(s), "
        f"{'GPU' if t.use_gpu else 'CPU'}, run {run_name(params)}"
    )
    uri = tracking.tracking_uri(params.tracking.uri)
    tracking.check_server(uri)
    shards = require_shards(params)
    extra_tags = tags
    tags = {
        "git_commit": tracking.git_commit() or "unknown",
        "data_version": data_version(shards),
        "dataset": params.data.dataset,
        "model": params.model.name,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    tags.update(extra_tags or {})
    experiment = params.experiment_name()
    run_id = tracking.start_run(
        uri, experiment, run_name(params), params.flatten(), tags, artifacts=["params.yaml", "dvc.lock"]
    )
    # the runs table's Dataset column: which data, at which version, from where
    tracking.log_dataset(uri, run_id, params.data.dataset, tags["data_version"], shards, "training")
    console.print(f"MLflow run {run_id} in experiment {experiment} ({tracking.redact(uri)})")
    from ray.train import TrainingFailedError

    try:
        try:
            result, shards = fit(params, (uri, run_id), feed=console, verbose=verbose)
        except TrainingFailedError as err:  # one line per failing worker, not Ray's traceback panel
            raise RuntimeError(f"training failed: {failure_reason(err)}") from err
        if result.error:
            raise RuntimeError(f"training failed: {failure_reason(result.error)}")
        best = best_checkpoint_state(result, t.best_metric, t.best_mode)
        with checkpoint_files(result.checkpoint) as d:
            last = torch.load(d / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        history = last["history"]
    except BaseException as err:  # Ctrl-C included: the MLflow run must not stay RUNNING
        tracking.end_run(uri, run_id, "FAILED", reason=f"{type(err).__name__}: {err}")
        raise

    out = Path(t.models_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".best.pt.tmp"
    torch.save({k: best[k] for k in ("model", "epoch", "params", "metrics")}, tmp)
    shutil.move(tmp, out / "best.pt")
    card = {
        "model": params.model.name,
        "run_name": run_name(params),
        "checkpoint": str(result.path),
        "best_metric": t.best_metric,
        "best_epoch": best["epoch"],
        "metrics": best["metrics"],
        "data": {"dataset": params.data.dataset, "shards": shards, "version": data_version(shards)},
        "params": best["params"],
        "history": history,
        "ray": {"worker_nodes": last.get("worker_nodes", [])},  # the node id of each rank, last attempt
    }
    card["mlflow"] = {"tracking_uri": tracking.redact(uri), "run_id": run_id}
    (out / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    tracking.log_artifact_bytes(uri, run_id, "model_card.json", (out / "model_card.json").read_bytes())
    tracking.end_run(uri, run_id)
    model = build_model(params)
    model.load_state_dict(best["model"])
    save_samples(model, shards, params, out / "samples.png")

    init, final = history[0], history[-1]
    table = Table("metric", "at init", f"epoch {final['epoch']}", title=f"val metrics ({params.model.name})")
    for k in dict.fromkeys([*init, *final]):  # a class's IoU is missing where it was neither labelled nor predicted
        if k.startswith("val/"):
            table.add_row(k, *(f"{row[k]:.4f}" if k in row else "–" for row in (init, final)))
    console.print(table)
    console.print(
        f"best ({t.best_metric}, epoch {best['epoch']}): {out / 'best.pt'}  card: {out / 'model_card.json'}  "
        f"predictions: {out / 'samples.png'}"
    )
    return card
