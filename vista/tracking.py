"""Experiment tracking with MLflow — the only module that imports mlflow.

Embedded default: a sqlite file ``mlflow.db`` with artifacts in ``mlartifacts/``, both in the project
folder (no server to start). ``$MLFLOW_TRACKING_URI`` or ``tracking.uri`` in params.yaml points elsewhere
(an MLflow server). Everything goes through an explicit ``MlflowClient`` and run id — no global active
run — so training workers (rank 0 only) log into the run the driver created.

One training run (one Ray Train run name) is one MLflow run: a re-run that resumes finds its run again by
the tag ``vista.run_name``, so the metric history stays in one place.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RUN_NAME_TAG = "vista.run_name"


def tracking_uri(uri: str | None = None, root: str | os.PathLike[str] = ".") -> str:
    """``$MLFLOW_TRACKING_URI``, else ``uri``, else ``sqlite:///<root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if uri:
        return uri
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _client(uri: str) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, artifact_root: str | os.PathLike[str] | None = None) -> str:
    """Get or create experiment ``name``; with a sqlite backend its artifacts go to ``mlartifacts/``."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        root = Path(artifact_root) if artifact_root else Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        location = root.resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit(root: str | os.PathLike[str] = ".") -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    artifacts: list[str | os.PathLike[str]] = (),  # type: ignore[assignment]
) -> str:
    """The run for ``run_name`` (found again when it exists, else created with params, tags, artifacts).

    Args:
        params: flattened settings (dotted keys).
        tags: e.g. git commit, data version, DVC experiment name.
        artifacts: files logged at the run's root (params.yaml, dvc.lock), when they exist.

    Returns:
        The MLflow run id.
    """
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    exp_id = experiment_id(uri, experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.set_terminated(run_id, "RUNNING")
        return run_id
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **(tags or {})})
    run_id = run.info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for path in artifacts:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path))
    return run_id


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Numbers of one step (epoch); metric keys ``split/task/metric``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
    _client(uri).log_batch(run_id, metrics=batch)


def log_images(uri: str, run_id: str, images: Mapping[str, np.ndarray], step: int) -> None:
    """uint8 H×W×3 images as step-indexed image series (compared side by side in the MLflow UI)."""
    client = _client(uri)
    for key, image in images.items():
        client.log_image(run_id, image, key=key, step=step)


def log_artifact_bytes(uri: str, run_id: str, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        _client(uri).log_artifact(run_id, str(path))


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status)


def run_metrics_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, by step (for tests and reports)."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))
