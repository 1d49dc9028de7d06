"""Ray Train for vista, the driver's side: :func:`fit` (a ``TorchTrainer`` over the per-worker loop of
:mod:`pipelines.ray_worker`), shared by the train stage, sweeps, studies and the benchmarks.

- One worker per DDP rank (gloo on CPU, NCCL on GPU), from ``params.train`` (workers, use_gpu,
  resources_per_worker).
- Resume: worker failures restart from the last checkpoint (``FailureConfig(max_failures)``); re-running
  with the same settings resumes the same run (its name derives from the settings, not the clock).
- Around it: Ray start-up (:func:`ray_init`), where runs are stored (:func:`storage_location`), reading a
  checkpoint (:func:`checkpoint_files`, :func:`best_checkpoint_state`), and what failed (:func:`failure_reason`).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import Any

from rich.console import Console

from pipelines.ports import free_port
from vista import tracking
from vista.checkpoint import load_checkpoint
from vista.config import Params, project_path
from vista.data import shards_location
from vista.recipe import run_name

from .ray_worker import (
    CHECKPOINT_FILE,
    NODES_TAG,
    SCORE_KEY,
    checkpoint_files,
    for_workers,
    from_driver,
    ray_env,
    train_loop_per_worker,
)

__all__ = [
    "CHECKPOINT_FILE",
    "NODES_TAG",
    "SCORE_KEY",
    "best_checkpoint_state",
    "checkpoint_files",
    "failure_reason",
    "fit",
    "for_workers",
    "from_driver",
    "ray_env",
    "ray_init",
    "ray_logging",
    "require_shards",
    "shard_index",
    "storage_location",
]


def ray_logging(verbose: bool = False) -> dict[str, Any]:
    """The ``ray.init`` arguments of the console: by default Ray's own warnings and errors only (workers'
    output stays in the session's log files; a worker's error still reaches ``fit`` with its traceback);
    ``verbose``: Ray's INFO logs and every worker's and the controller's output on the driver."""
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}


def ray_init(verbose: bool = False) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (e.g. inside ``ray job submit``), or start Ray locally, with the
    console of :func:`ray_logging`.

    The local instance runs the dashboard on 127.0.0.1 (a free port below the ephemeral range, out of
    reach of other Ray instances here: :func:`pipelines.ports.free_port`): Ray Train's placement-group cleaner
    asks the state API (served by the dashboard) whether a run's controller is still alive. Without it, the
    workers' CPUs of a run that was stopped from outside (a Tune trial stopped by ASHA, a killed driver)
    stay reserved and the next run waits for resources forever (ray-project/ray#54305).
    ``RAY_API_SERVER_ADDRESS`` points the workers at this instance even when other Ray instances run here.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local run needs no token (loopback only)
    env_vars = ray_env()
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a cluster
        ray.init(runtime_env=runtime_env, **ray_logging(verbose))
        return
    port = free_port()  # below the ephemeral range: a port another Ray instance here cannot draw
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        runtime_env=runtime_env,
        **ray_logging(verbose),
    )


def shard_index(params: Params) -> tuple[str, dict[str, Any]]:
    """The shards location of ``params.data`` (absolute folder or URL prefix) and its ``shards.json``,
    read once; raises when there is none there (the shard stage has not run, or the URL is wrong)."""
    from vista.data.webdata import load_index

    shards = shards_location(params.data)
    try:
        index = load_index(shards)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{shards}/shards.json: no shards (run `vista prepare` and `vista shard`, or `dvc repro`)"
        ) from None
    except OSError as err:
        raise FileNotFoundError(str(err)) from None
    return shards, index


def require_shards(params: Params) -> str:
    """The shards location of ``params.data``; raises as :func:`shard_index` does."""
    return shard_index(params)[0]


def storage_location(path: str) -> str:
    """Where Ray keeps a run: a URI (``s3://...``) as it is; a folder made absolute, a relative one from the
    project's root (``$DVC_ROOT`` when DVC runs the stage: :func:`vista.config.project_path`)."""
    return path if "://" in path else str(project_path(path))


def fit(
    params: Params,
    mlflow_run: tuple[str, str] | None = None,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: list[Any] = (),  # type: ignore[assignment]
    feed: Console | None = None,
    verbose: bool = False,
    shards: tuple[str, dict[str, Any]] | None = None,
) -> Any:
    """Train with Ray Train; returns Ray's result.

    Args:
        mlflow_run: ``(tracking uri, run id)`` that rank 0 logs into.
        shards: ``(location, shards.json)`` when the caller has read them (:func:`shard_index`); the
            workers get the index with their config and do not read it again.
        name, storage_path: the Ray Train run (default: :func:`run_name`, ``train.storage_path``).
        callbacks: Ray Train callbacks (a Tune trial passes ``TuneReportCallback``).
        feed: print one line per epoch there (:mod:`pipelines.feed`).
        verbose: Ray's INFO logs and the workers' output on the driver, when this call starts Ray.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .feed import EpochFeed

    location, index = shards or shard_index(params)
    t = params.train
    storage = storage_path or t.storage_path
    worker_uri = for_workers(mlflow_run[0]) if mlflow_run else None  # before Ray starts: env
    ray_init(verbose)
    lines = EpochFeed(feed, t.epochs, t.best_metric, t.time_budget_s) if feed is not None else None
    callbacks = [*callbacks, *([lines.callback] if lines else [])]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "params": tracking.redacted_dump(params),  # what checkpoints and cards store
            "shards": location,
            "index": index,
            "tracking_uri": worker_uri,
            "mlflow_run_id": mlflow_run[1] if mlflow_run else None,
        },
        scaling_config=ScalingConfig(
            num_workers=t.workers, use_gpu=t.use_gpu, resources_per_worker=dict(t.resources_per_worker)
        ),
        run_config=RunConfig(
            name=name or run_name(params),
            storage_path=storage_location(storage),
            failure_config=FailureConfig(max_failures=t.max_failures),
            # Ray keeps the latest checkpoint (to resume from) beside the best `keep_checkpoints`
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order=t.best_mode
            ),
            callbacks=callbacks,
        ),
    )
    with lines or nullcontext():
        result = trainer.fit()
    return result


def best_checkpoint_state(result: Any, metric: str, mode: str) -> dict[str, Any]:
    """The saved state (weights, metrics, history) of the best reported checkpoint."""
    if not any(metric in m for _, m in result.best_checkpoints):
        raise ValueError(f"train.best_metric={metric!r} was never reported (reported: {sorted(result.metrics)})")
    best = result.get_best_checkpoint(metric=metric, mode=mode)
    with checkpoint_files(best) as d:
        return load_checkpoint(d / CHECKPOINT_FILE)


def failure_reason(err: BaseException) -> str:
    """What each failing Ray Train worker raised, one ``rank r: Type: message`` per rank (Ray's own text,
    a traceback per worker, stays in the worker logs and on the console with ``--verbose``)."""
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return str(err)
    return "; ".join(f"rank {rank}: {type(e).__name__}: {e}" for rank, e in sorted(failures.items()))
