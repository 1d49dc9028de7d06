"""The per-worker loop of Ray Train for vista (one DDP rank), and reading a checkpoint's files.

- Each worker re-validates the params, reads the shards with ``vista.data.webdata`` and runs
  ``vista.engine``; Ray adds only workers, devices, reports and checkpoints.
- Every epoch: ``ray.train.report`` with metrics keyed ``split/task/metric`` and a checkpoint from rank 0.
  Epoch 0 is the evaluation at initialisation.
- Credentials: a tracking URI with credentials reaches the workers through the environment only
  (:func:`for_workers`, :func:`from_driver`, :func:`ray_env`).
- Resume: a restarted worker continues from the last reported checkpoint (:func:`checkpoint_files` reads
  it, also from object storage).

The driver side (``fit``, Ray start-up, failure reasons) is :mod:`pipelines.ray_train`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vista import tracking
from vista.checkpoint import load_checkpoint, save_checkpoint, unwrap
from vista.config import Params, validate_params
from vista.data.webdata import eval_loader
from vista.engine import TimeBudget, evaluate, train_one_epoch
from vista.recipe import build_model, task_metrics, training_parts
from vista.visualize import first_batch, prediction_panels

CHECKPOINT_FILE = "model.pt"
SCORE_KEY = "checkpoint/score"  # train.best_metric, NaN on epochs without an evaluation
NODES_TAG = "vista.worker_nodes"  # MLflow tag: the Ray node id of each rank (JSON list, index = rank)


@contextlib.contextmanager
def checkpoint_files(checkpoint: Any) -> Iterator[Path]:
    """A Ray checkpoint's files in a local folder that this process alone reads.

    Ray's ``Checkpoint.as_directory`` downloads a remote checkpoint (S3, GCS, ...) into one temporary
    folder per checkpoint, shared by every process of the host, and a process that starts its download
    after another one finished writes the files again while the other is reading them
    (ray-project/ray#48726): after a node failure, two ranks on one host restoring from S3 read a torn
    ``model.pt``. Here each process downloads into a private temporary folder, removed on exit; a checkpoint
    on the local filesystem is read where it is (nothing writes it once reported)."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="vista_checkpoint_") as d:
        yield Path(checkpoint.to_directory(d))


# the credential hand-off: a tracking URI with credentials never goes into Ray's task arguments or Tune's
# saved state; the workers get it from the environment


def for_workers(uri: str) -> str:
    """The tracking URI to hand to Ray (task arguments, Tune's saved sweep state): ``uri`` itself when
    it has no credentials; otherwise its redacted form, with the real one exported as
    ``$MLFLOW_TRACKING_URI`` (which a local Ray instance's workers inherit and :func:`ray_env` passes on)."""
    if tracking.redact(uri) == uri:
        return uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return tracking.redact(uri)


def from_driver(uri: str) -> str:
    """In a Ray worker: the real URI behind what :func:`for_workers` handed over."""
    if "://***@" not in uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking.redact(env) != uri:
        raise ConnectionError(
            f"tracking URI {uri}: its credentials stay on the driver; set MLFLOW_TRACKING_URI (with them) in the "
            "environment of the Ray cluster's nodes"
        )
    return env


def ray_env() -> dict[str, str]:
    """Environment variables a Ray job must carry to its workers (a credentialed ``$MLFLOW_TRACKING_URI``)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    return {"MLFLOW_TRACKING_URI": env} if env and tracking.redact(env) != env else {}


def worker_nodes(world: int) -> list[str]:
    """The Ray node id of every rank (index = rank), gathered over the process group."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not torch.distributed.is_initialized():
        return [node]
    nodes: list[str] = [""] * world
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker (one DDP rank)."""
    import ray.train
    import ray.train.torch

    params = validate_params(config["params"])
    shards, index = config["shards"], config["index"]  # the driver read shards.json
    t, ld = params.train, params.loader
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    nodes = worker_nodes(world)
    torch.manual_seed(t.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)

    model = ddp_model(params, world)
    checkpoint = ray.train.get_checkpoint()
    budget = TimeBudget(t.time_budget_s) if t.time_budget_s else None  # resumed below from the checkpoint
    opt, sched, loss_fn, train_data, steps = training_parts(params, model, shards, world, budget, index)
    metrics = task_metrics(params, index.get("classes"))  # per-class IoU under the classes' names
    pin, skip = device.type == "cuda", params.data.on_bad_sample
    val_data = eval_loader(shards, "val", t.batch_size, ld.num_workers, skip, pin, index)
    logged = rank == 0 and config.get("mlflow_run_id")  # rank 0 logs into the run's MLflow run
    run = RankZeroLog(config, params, model, (shards, index), device) if logged else None

    validate = functools.partial(evaluate, model, val_data, metrics, device, amp=t.amp, channels_last=t.channels_last)
    monitor = run.start(nodes, resumed=checkpoint is not None) if run else None
    try:
        if checkpoint is not None:
            start, history = resume(checkpoint, model, opt, sched, device, budget, t.epochs)
        else:
            init = validate()
            start, history = 1, [{"epoch": 0, "train/elapsed_s": 0.0, **init}]
            ray.train.report({"epoch": 0, **init})
            if run:
                run.log(history[-1])

        # training wall-clock (evaluations included) from the first step on; the budget's, if there is one
        clock = budget or TimeBudget(float("inf"), spent=history[-1].get("train/elapsed_s", 0.0))
        clock.restart()
        for epoch in range(start, t.epochs + 1):
            tic = time.perf_counter()
            losses = train_one_epoch(
                model, train_data, opt, loss_fn, device, sched, amp=t.amp, channels_last=t.channels_last, budget=budget
            )
            seconds = time.perf_counter() - tic
            last = epoch == t.epochs or (budget is not None and budget.exhausted())
            val = validate() if last or epoch % t.eval_every == 0 else {}
            elapsed = clock.tick()  # agreed over ranks
            history.append(epoch_row(epoch, losses, seconds, elapsed, t.batch_size * world, val))
            report_epoch(history, model, opt, sched, config["params"], t.best_metric, nodes, save=rank == 0)
            if run:
                run.log(history[-1])
            if last:
                break
    finally:
        if monitor is not None:
            monitor.finish()


def ddp_model(params: Params, world: int) -> torch.nn.Module:
    """The settings' network on this worker's device, wrapped for DDP (``ray.train.torch.prepare_model``):
    channels-last weights, compiled, 16-bit gradient all-reduce, as ``params.train`` asks."""
    import ray.train.torch

    t = params.train
    net = build_model(params)
    if t.channels_last:  # the weights too, not only the input: convolutions then skip the layout changes
        net = net.to(memory_format=torch.channels_last)
    if t.compile:  # in place: the forward is compiled, parameter names (and so checkpoints) stay as they are
        net.compile()
    model = ray.train.torch.prepare_model(net)
    if t.grad_compression != "none" and world > 1:
        # all-reduce gradients in 16 bits: half the bytes; with gloo on CPUs the fp32 all-reduce of a
        # ResNet-18 costs ~40% of a step, fp16 almost nothing (benchmarks/train.py)
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        hook = default_hooks.fp16_compress_hook if t.grad_compression == "fp16" else default_hooks.bf16_compress_hook
        model.register_comm_hook(None, hook)
    return model


def resume(
    checkpoint: Any, model: Any, opt: Any, sched: Any, device: Any, budget: TimeBudget | None, epochs: int
) -> tuple[int, list[dict[str, Any]]]:
    """Load the last reported checkpoint into the model, optimiser and schedule (and the budget's clock);
    returns ``(first epoch to train, history so far)``."""
    with checkpoint_files(checkpoint) as d:
        state = load_checkpoint(d / CHECKPOINT_FILE, model, opt, sched, map_location=device)
    start, history = state["epoch"] + 1, list(state["history"])
    if budget is not None:
        budget.resume(state.get("elapsed_s", 0.0))
    if budget is not None and budget.exhausted():
        start = epochs + 1  # the budget was spent before the failure: nothing left to train
    return start, history


def report_epoch(
    history: list[dict[str, Any]],
    model: Any,
    opt: Any,
    sched: Any,
    params_tree: dict[str, Any],
    best_metric: str,
    nodes: list[str],
    save: bool,
) -> None:
    """``ray.train.report`` the epoch's row (``history[-1]``) with the retention score, and (``save``: rank
    0) the checkpoint: weights, optimiser, schedule, settings, history, training seconds, the ranks' nodes."""
    import ray.train

    row = history[-1]
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if save:
            save_checkpoint(
                Path(d) / CHECKPOINT_FILE,
                model,
                opt,
                sched,
                epoch=row["epoch"],
                params=params_tree,
                metrics=row,
                history=history,
                elapsed_s=row["train/elapsed_s"],
                worker_nodes=nodes,
            )
            ckpt = ray.train.Checkpoint.from_directory(d)
        # the retention score: epochs without an evaluation rank below every evaluated one (NaN)
        score = {SCORE_KEY: row.get(best_metric, float("nan"))}
        ray.train.report({**row, **score}, checkpoint=ckpt)


def epoch_row(
    epoch: int, losses: dict[str, float], seconds: float, elapsed: float, global_batch: int, val: dict[str, float]
) -> dict[str, Any]:
    """An epoch's history row: the mean training losses, speed (``losses["steps"]`` steps of
    ``global_batch`` samples in ``seconds``), the training wall-clock so far, and the evaluation's numbers."""
    samples = losses.pop("steps") * global_batch
    speed = {"train/seconds": seconds, "train/samples_per_s": samples / seconds}
    return {"epoch": epoch, **{f"train/{k}": v for k, v in losses.items()}, **speed, "train/elapsed_s": elapsed, **val}


class RankZeroLog:
    """What rank 0 sends to the run's MLflow run: the ranks' nodes, system metrics, each epoch's numbers and
    prediction panels of the first val images (``tracking.log_images`` of them)."""

    def __init__(
        self, config: dict[str, Any], params: Params, model: Any, shards: tuple[str, dict[str, Any]], device: Any
    ) -> None:
        self.uri, self.run_id, self.params = (
            from_driver(config["tracking_uri"]),
            config["mlflow_run_id"],
            params,
        )
        self.net = unwrap(model)
        self.viz = None
        if params.tracking.log_images:
            skip = params.data.on_bad_sample
            location, index = shards
            self.viz = first_batch(
                eval_loader(location, "val", params.tracking.log_images, on_bad_sample=skip, index=index)
            )
            self.viz["rgb"] = self.viz["rgb"].to(device)

    def start(self, nodes: list[str], resumed: bool) -> Any:
        """Tag where this attempt's ranks run (after a node failure they may have moved); start the system
        metrics monitor (returned; ``None`` when ``tracking.system_metrics_s`` is 0)."""
        tracking.set_tags(self.uri, self.run_id, {NODES_TAG: json.dumps(nodes)})
        if self.params.tracking.system_metrics_s > 0:
            return tracking.system_metrics(self.uri, self.run_id, self.params.tracking.system_metrics_s, resume=resumed)
        return None

    def log(self, row: dict[str, Any]) -> None:
        """The epoch's numbers and prediction panels, once the report has gone through."""
        tracking.log_metrics(self.uri, self.run_id, row, step=row["epoch"])
        if self.viz is not None:
            panels = prediction_panels(self.net, self.viz, self.params)
            step = row["epoch"]
            tracking.log_images(self.uri, self.run_id, {f"val/sample_{i}": p for i, p in enumerate(panels)}, step=step)
