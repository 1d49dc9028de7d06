"""The per-worker loop of Ray Train for vista (one DDP rank), and reading a checkpoint's files.

- Each worker re-validates the params, reads the shards with ``vista.data.webdata`` and runs
  ``vista.engine``; Ray adds only workers, devices, reports and checkpoints.
- Every epoch: ``ray.train.report`` with metrics keyed ``split/task/metric`` and a checkpoint from rank 0.
  Epoch 0 is the evaluation at initialisation.
- Resume: a restarted worker continues from the last reported checkpoint (:func:`checkpoint_files` reads
  it, also from object storage).

The driver side (``fit``, Ray start-up, failure reasons) is :mod:`pipelines.ray_train`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vista import tracking
from vista.checkpoint import load_checkpoint, save_checkpoint
from vista.config import validate_params
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

    from vista.data.webdata import eval_loader, load_index

    params = validate_params(config["params"])
    shards = config["shards"]
    t, ld = params.train, params.loader
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    nodes = worker_nodes(world)
    torch.manual_seed(t.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)

    net0 = build_model(params)
    if t.channels_last:  # the weights too, not only the input: convolutions then skip the layout changes
        net0 = net0.to(memory_format=torch.channels_last)
    if t.compile:  # in place: the forward is compiled, parameter names (and so checkpoints) stay as they are
        net0.compile()
    model = ray.train.torch.prepare_model(net0)
    if t.grad_compression != "none" and world > 1:
        # all-reduce gradients in 16 bits: half the bytes; with gloo on CPUs the fp32 all-reduce of a
        # ResNet-18 costs ~40% of a step, fp16 almost nothing (benchmarks/train.py)
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        hook = default_hooks.fp16_compress_hook if t.grad_compression == "fp16" else default_hooks.bf16_compress_hook
        model.register_comm_hook(None, hook)
    checkpoint = ray.train.get_checkpoint()
    budget = TimeBudget(t.time_budget_s) if t.time_budget_s else None  # resumed below from the checkpoint
    index = load_index(shards)
    opt, sched, loss_fn, train_data, steps = training_parts(params, model, shards, world, budget, index)
    metrics = task_metrics(params, index.get("classes"))  # per-class IoU under the classes' names
    skip = params.data.on_bad_sample
    pin = device.type == "cuda"
    val_data = eval_loader(shards, "val", t.batch_size, ld.num_workers, on_bad_sample=skip, pin_memory=pin)

    uri, run_id = config.get("tracking_uri"), config.get("mlflow_run_id")
    uri = tracking.from_driver(uri) if uri else None
    net = model.module if hasattr(model, "module") else model
    viz = None
    if rank == 0 and run_id and params.tracking.log_images:
        viz = first_batch(eval_loader(shards, "val", params.tracking.log_images, on_bad_sample=skip))
        viz["rgb"] = viz["rgb"].to(device)

    def track(row: dict[str, Any]) -> None:
        """Rank 0 logs the epoch's numbers and prediction panels, once the report has gone through."""
        if rank != 0 or not run_id:
            return
        tracking.log_metrics(uri, run_id, row, step=row["epoch"])
        if viz is not None:
            panels = prediction_panels(net, viz, params)
            tracking.log_images(uri, run_id, {f"val/sample_{i}": p for i, p in enumerate(panels)}, step=row["epoch"])

    history: list[dict[str, Any]] = []
    start = 1
    monitor = None
    if rank == 0 and run_id:  # where this attempt's ranks run (after a node failure they may have moved)
        tracking.set_tags(uri, run_id, {NODES_TAG: json.dumps(nodes)})
    if rank == 0 and run_id and params.tracking.system_metrics_s > 0:
        monitor = tracking.system_metrics(uri, run_id, params.tracking.system_metrics_s, resume=checkpoint is not None)
    try:
        if checkpoint is not None:
            with checkpoint_files(checkpoint) as d:
                state = load_checkpoint(d / CHECKPOINT_FILE, model, opt, sched, map_location=device)
            start, history = state["epoch"] + 1, list(state["history"])
            if budget is not None:
                budget.resume(state.get("elapsed_s", 0.0))
            if budget is not None and budget.exhausted():
                start = t.epochs + 1  # the budget was spent before the failure: nothing left to train
        else:
            init = evaluate(model, val_data, metrics, device, amp=t.amp, channels_last=t.channels_last)
            history.append({"epoch": 0, "train/elapsed_s": 0.0, **init})
            ray.train.report({"epoch": 0, **init})
            track(history[-1])

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
            val = {}
            if last or epoch % t.eval_every == 0:
                val = evaluate(model, val_data, metrics, device, amp=t.amp, channels_last=t.channels_last)
            samples = losses.pop("steps") * t.batch_size * world
            speed = {"train/seconds": seconds, "train/samples_per_s": samples / seconds}
            elapsed = clock.tick()  # agreed over ranks
            row = {
                "epoch": epoch,
                **{f"train/{k}": v for k, v in losses.items()},
                **speed,
                "train/elapsed_s": elapsed,
                **val,
            }
            history.append(row)
            with tempfile.TemporaryDirectory() as d:
                ckpt = None
                if rank == 0:
                    save_checkpoint(
                        Path(d) / CHECKPOINT_FILE,
                        model,
                        opt,
                        sched,
                        epoch=epoch,
                        params=config["params"],
                        metrics=row,
                        history=history,
                        elapsed_s=elapsed,
                        worker_nodes=nodes,
                    )
                    ckpt = ray.train.Checkpoint.from_directory(d)
                # the retention score: epochs without an evaluation rank below every evaluated one (NaN)
                score = {SCORE_KEY: row.get(t.best_metric, float("nan"))}
                ray.train.report({**row, **score}, checkpoint=ckpt)
            track(row)
            if last:
                break
    finally:
        if monitor is not None:
            monitor.finish()
