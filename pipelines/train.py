"""Stage `train`: the settings' model trained with Ray Train (:mod:`pipelines.ray_train`) over the shards,
tracked in one MLflow run.

The best checkpoint (``train.best_metric``/``best_mode``) is copied to ``models/best.pt`` with
``models/model_card.json`` and a panel of val predictions ``models/samples.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from vista import tracking
from vista.checkpoint import load_checkpoint
from vista.config import Params
from vista.data.webdata import data_version
from vista.files import atomic_path, write_json
from vista.recipe import build_model, preflight, run_name
from vista.visualize import save_samples

from .ray_train import CHECKPOINT_FILE, best_checkpoint_state, checkpoint_files, failure_reason, fit, shard_index


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
    shards, index = shard_index(params)
    version = data_version(shards)
    run_id = open_run(params, uri, shards, version, tags)
    console.print(f"MLflow run {run_id} in experiment {params.experiment_name()} ({tracking.redact(uri)})")
    from ray.train import TrainingFailedError

    try:
        try:
            result = fit(params, (uri, run_id), feed=console, verbose=verbose, shards=(shards, index))
        except TrainingFailedError as err:  # one line per failing worker, not Ray's traceback panel
            raise RuntimeError(f"training failed: {failure_reason(err)}") from err
        if result.error:
            raise RuntimeError(f"training failed: {failure_reason(result.error)}")
        best = best_checkpoint_state(result, t.best_metric, t.best_mode)
        with checkpoint_files(result.checkpoint) as d:
            last = load_checkpoint(d / CHECKPOINT_FILE)
    except BaseException as err:  # Ctrl-C included: the MLflow run must not stay RUNNING
        tracking.end_run(uri, run_id, "FAILED", reason=f"{type(err).__name__}: {err}")
        raise

    out = Path(t.models_dir)
    with atomic_path(out / "best.pt") as tmp:
        torch.save({k: best[k] for k in ("model", "epoch", "params", "metrics")}, tmp)
    card = model_card(
        params, result, best, last, {"dataset": params.data.dataset, "shards": shards, "version": version}
    )
    card["mlflow"] = {"tracking_uri": tracking.redact(uri), "run_id": run_id}
    tracking.log_artifact_bytes(uri, run_id, "model_card.json", write_json(out / "model_card.json", card).read_bytes())
    tracking.end_run(uri, run_id)
    model = build_model(params)
    model.load_state_dict(best["model"])
    save_samples(model, shards, params, out / "samples.png")
    print_summary(console, params, card, out)
    return card


def open_run(params: Params, uri: str, shards: str, version: str, extra_tags: dict[str, str] | None) -> str:
    """The training's MLflow run (resumed when these settings ran before): tags (commit, data version,
    dataset, model, DVC experiment, ``extra_tags``), the settings, params.yaml and dvc.lock, the dataset."""
    tags = {
        "git_commit": tracking.git_commit() or "unknown",
        "data_version": version,
        "dataset": params.data.dataset,
        "model": params.model.name,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    tags.update(extra_tags or {})
    run_id = tracking.start_run(
        uri, params.experiment_name(), run_name(params), params.flatten(), tags, artifacts=["params.yaml", "dvc.lock"]
    )
    # the runs table's Dataset column: which data, at which version, from where
    tracking.log_dataset(uri, run_id, params.data.dataset, version, shards, "training")
    return run_id


def model_card(params: Params, result: Any, best: dict[str, Any], last: dict[str, Any], data: dict[str, str]) -> dict:
    """``models/model_card.json`` (without its ``mlflow`` entry): the model, the Ray run, the best epoch and
    its metrics, the data, the settings, the history, where the ranks ran."""
    return {
        "model": params.model.name,
        "run_name": run_name(params),
        "checkpoint": str(result.path),
        "best_metric": params.train.best_metric,
        "best_epoch": best["epoch"],
        "metrics": best["metrics"],
        "data": data,
        "params": best["params"],
        "history": last["history"],
        "ray": {"worker_nodes": last.get("worker_nodes", [])},  # the node id of each rank, last attempt
    }


def print_summary(console: Console, params: Params, card: dict[str, Any], out: Path) -> None:
    """The val metrics at initialisation and at the last epoch, and where the outputs are."""
    history = card["history"]
    init, final = history[0], history[-1]
    table = Table("metric", "at init", f"epoch {final['epoch']}", title=f"val metrics ({params.model.name})")
    for k in dict.fromkeys([*init, *final]):  # a class's IoU is missing where it was neither labelled nor predicted
        if k.startswith("val/"):
            table.add_row(k, *(f"{row[k]:.4f}" if k in row else "–" for row in (init, final)))
    console.print(table)
    console.print(
        f"best ({params.train.best_metric}, epoch {card['best_epoch']}): {out / 'best.pt'}  "
        f"card: {out / 'model_card.json'}  predictions: {out / 'samples.png'}"
    )
