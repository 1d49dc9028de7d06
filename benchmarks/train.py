"""Training throughput (samples/s) of one model on one dataset through three paths, in one run:

- ``bare``: a plain PyTorch loop in this process (``vista.engine.train_one_epoch`` over the shard reader);
- ``ray x1``: the Ray Train path of ``vista train`` (``pipelines.ray_train.fit``) with 1 worker;
- ``ray x2``: the same with 2 workers (DDP, gloo on CPU).

Each path trains ``--epochs`` epochs of the same model, data, batch size and seed. Throughput is the
median over epochs 2.. of (train samples per epoch) / (seconds in ``train_one_epoch``): steady state,
without evaluation, checkpointing or start-up; the wall time of the whole run (Ray start-up, evaluation
at init and per epoch, checkpoints) is printed beside it. CPU threads are shared fairly: the bare loop uses
all cores, 1 Ray worker gets all cores (``resources_per_worker.CPU``), 2 workers get half each (Ray sets
each worker's OMP threads to its CPUs). The bare loop runs first and last to show drift.

Usage: ``python benchmarks/train.py [--epochs 3] [--set key=value ...] [--profile NAME] [--bare-only]``
(defaults: params.yaml, i.e. vista_r18 on the synthetic shards; missing shards are prepared first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare(params, shards: str, epochs: int) -> tuple[float, float]:  # noqa: ANN001
    """(median samples/s over epochs 2.., wall seconds) of a plain loop in this process."""
    from vista.engine import train_one_epoch
    from vista.recipe import build_model, training_parts

    wall = time.perf_counter()
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": epochs})})
    t = params.train
    torch.manual_seed(t.seed)
    model = build_model(params)
    if t.channels_last:  # as the Ray Train workers do
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model.compile()
    opt, sched, loss_fn, data, steps = training_parts(params, model, shards)
    speeds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        train_one_epoch(model, data, opt, loss_fn, "cpu", sched, amp=t.amp, channels_last=t.channels_last)
        speeds.append(steps * t.batch_size / (time.perf_counter() - tic))
    return statistics.median(speeds[1:] or speeds), time.perf_counter() - wall


def ray_path(params, workers: int, cpus: int, epochs: int, storage: str) -> tuple[float, float]:  # noqa: ANN001
    """(median samples/s over epochs 2.., wall seconds of fit) through ``pipelines.ray_train.fit``."""
    from pipelines.ray_train import CHECKPOINT_FILE, checkpoint_files, fit

    train = params.train.model_copy(
        update={
            "workers": workers,
            "resources_per_worker": {"CPU": cpus / workers},
            "epochs": epochs,
            "storage_path": storage,
            "run_name": f"bench_x{workers}_{os.getpid()}",
        }
    )
    p = params.model_copy(update={"train": train})
    wall = time.perf_counter()
    result = fit(p)  # no MLflow run: tracking is not what is measured
    wall = time.perf_counter() - wall
    if result.error:
        raise RuntimeError(f"ray x{workers} failed: {result.error}")
    with checkpoint_files(result.checkpoint) as d:
        history = torch.load(d / CHECKPOINT_FILE, weights_only=True)["history"]
    speeds = [row["train/samples_per_s"] for row in history if row["epoch"] >= 1]
    return statistics.median(speeds[1:] or speeds), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override key=value")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--bare-only", action="store_true", help="the plain loop only, twice (before/after comparisons)")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import ray

    from pipelines import prepare, shard
    from pipelines.ray_train import require_shards
    from vista.config import load_params

    os.chdir(ROOT)
    params = load_params(ROOT / "params.yaml", args.overrides, args.profile)
    try:
        shards = require_shards(params)
    except FileNotFoundError:
        prepare.run(params)
        shard.run(params)
        shards = require_shards(params)
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    m, t = params.model, params.train
    print(
        f"training throughput: {m.name} width={m.width} tasks={','.join(m.tasks)} on {params.data.dataset} "
        f"{tuple(params.data.image_size)}, batch {t.batch_size} per worker, {args.epochs} epochs per path, "
        f"{cpus} CPUs, torch {torch.__version__}, ray {ray.__version__}"
    )
    rows: list[tuple[str, float, float]] = []
    rows.append(("bare (1 process)", *bare(params, shards, args.epochs)))
    if not args.bare_only:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _temp_dir=f"/tmp/vb{os.getpid()}")
        with tempfile.TemporaryDirectory() as storage:
            for workers in (1, 2):
                rows.append((f"ray train x{workers}", *ray_path(params, workers, cpus, args.epochs, storage)))
        ray.shutdown()
    rows.append(("bare again", *bare(params, shards, args.epochs)))

    print(f"{'path':<20}{'samples/s':>12}{'wall s':>10}")
    for name, speed, wall in rows:
        print(f"{name:<20}{speed:>12.2f}{wall:>10.1f}")
    if args.bare_only:
        return
    base = (rows[0][1] + rows[-1][1]) / 2
    print(f"ray x1 / bare: {rows[1][1] / base:.2f}x   (target >= 0.9x)")
    print(f"ray x2 / bare: {rows[2][1] / base:.2f}x")


if __name__ == "__main__":
    main()
