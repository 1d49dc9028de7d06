"""Experiment tracking with MLflow — the only module that imports mlflow (besides ``mlflow_model.py``,
the registered model's code, which MLflow runs when it logs or loads the model).

Embedded default: a sqlite file ``mlflow.db`` with artifacts in ``mlartifacts/``, both in the project
folder (no server to start): ``$DVC_ROOT`` when DVC runs the stage, so that experiments DVC runs in a
temporary copy of the project log there too (:func:`vista.config.project_path`). ``$MLFLOW_TRACKING_URI``
or ``tracking.uri`` in params.yaml points elsewhere (an MLflow server). Everything goes through an
explicit ``MlflowClient`` and run id — no global active run — so training workers (rank 0 only) log into
the run the driver created.

One training run (one Ray Train run name) is one MLflow run: a re-run that resumes finds its run again by
the tag ``vista.run_name``, so the metric history stays in one place. Every experiment vista uses is tagged
as model training (``mlflow.experimentKind``), which MLflow records and searches by; MLflow 3.17's UI
still opens every experiment in its GenAI view unless the URL asks for ``workflowType=machine_learning``,
so ``vista ui`` prints that link.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .config import project_path

RUN_NAME_TAG = "vista.run_name"
FAILURE_TAG = "vista.failure"  # the reason a run ended FAILED
# the experiment kind MLflow (3.x) records ("custom_model_development" = "Model training"); the 3.17 UI
# picks its view from its own switch or the URL's workflowType, not from this tag (`vista ui` links with it)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
DIGEST_CHARS = 12  # MLflow keeps at most 36 characters of a dataset digest; a data version is a sha256
CHECK_TIMEOUT_S = 5.0  # how long the tracking server may take to answer before any compute starts

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """Credentials in URIs removed anywhere in ``text``: ``http://user:secret@host`` -> ``http://***@host``.

    Everything that leaves memory (console, MLflow params and tags, model cards, checkpoints, errors)
    goes through this.
    """
    return _USERINFO.sub("***@", text)


def redacted_dump(params: Any) -> dict[str, Any]:
    """The settings as JSON, with credentials removed from the tracking URI (checkpoints store this)."""
    tree = params.model_dump(mode="json")
    if tree["tracking"]["uri"]:
        tree["tracking"]["uri"] = redact(tree["tracking"]["uri"])
    return tree


def check_server(uri: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """An ``http(s)://`` tracking server answers its ``/health`` within ``timeout_s``, else ``ConnectionError``
    naming it (credentials redacted). Other backends (sqlite, files, databricks) are not probed.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        answer = requests.get(url, timeout=timeout_s)
    except requests.RequestException as err:
        reason = type(err).__name__
        raise ConnectionError(
            f"MLflow tracking server {redact(uri)} did not answer within {timeout_s:g} s ({reason}); "
            "start it, or point tracking.uri / $MLFLOW_TRACKING_URI at a running one"
        ) from None
    if answer.status_code != 200:
        raise ConnectionError(
            f"MLflow tracking server {redact(uri)}: GET /health answered HTTP {answer.status_code}"
            + (" (credentials refused)" if answer.status_code in (401, 403) else "")
        )


def tracking_uri(uri: str | None = None, root: str | os.PathLike[str] = ".") -> str:
    """``$MLFLOW_TRACKING_URI``, else ``uri``, else ``sqlite:///<root>/mlflow.db`` (a relative ``root`` from
    ``$DVC_ROOT`` when set, else from the working directory: :func:`vista.config.project_path`)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if uri:
        return uri
    return f"sqlite:///{project_path(root) / 'mlflow.db'}"


def _client(uri: str) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, artifact_root: str | os.PathLike[str] | None = None) -> str:
    """Get or create experiment ``name``, tagged as model training (an experiment that has no kind yet gets
    it; a kind someone set stays). With a sqlite backend its artifacts go to ``mlartifacts/``."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        root = Path(artifact_root) if artifact_root else Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        location = root.resolve().as_uri()
    return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})


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
    from mlflow.entities import Param

    client = _client(uri)
    exp_id = experiment_id(uri, experiment)
    found = find_run(uri, experiment, run_name)
    if found:
        client.set_terminated(found, "RUNNING")
        return found
    tags = {k: redact(str(v)) for k, v in (tags or {}).items()}
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    run_id = run.info.run_id
    items = [Param(k, redact(str(v))[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    for path in artifacts:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path))
    return run_id


def find_run(uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the run ``start_run`` created for ``run_name``, or None."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
    )
    return found[0].info.run_id if found else None


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Numbers of one step (epoch); metric keys ``split/task/metric``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
    _client(uri).log_batch(run_id, metrics=batch)


def dataset_digest(version: str) -> str:
    """The digest MLflow shows for a data version (a sha256 hex): its first :data:`DIGEST_CHARS` characters."""
    return version[:DIGEST_CHARS]


def log_dataset(uri: str, run_id: str, name: str, version: str, source: str, context: str = "training") -> None:
    """Record dataset ``name`` at data version ``version``, read from ``source`` (a folder or URL, redacted),
    as an input of the run with context ``context`` (MLflow's ``mlflow.data.context``: the runs table's
    Dataset column). Only metadata is logged, never the data."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # mlflow 3.17 registers local paths twice ("" and file:) and says so
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        found = resolve_dataset_source(redact(source))
    meta = MetaDataset(found, name=name, digest=dataset_digest(version))
    entry = DatasetInput(Dataset(**meta.to_dict()), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    _client(uri).log_inputs(run_id, datasets=[entry])


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


def log_figure(uri: str, run_id: str, figure: Any, artifact_file: str, dpi: int = 100) -> None:
    """A matplotlib figure as the artifact ``artifact_file`` of the run (the format follows its extension)."""
    _client(uri).log_figure(run_id, figure, artifact_file, save_kwargs={"dpi": dpi})


def end_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """Terminate the run; a FAILED run gets its ``reason`` as the tag ``vista.failure``."""
    client = _client(uri)
    if reason:
        client.set_tag(run_id, FAILURE_TAG, redact(reason)[:5000])
    client.set_terminated(run_id, status)


def run_metrics_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, by step (for tests and reports)."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


# --------------------------------------------------------------------------------------------------
# System metrics (CPU, memory, disk, network; GPU with pynvml), sampled in a background thread
# --------------------------------------------------------------------------------------------------


def system_metrics(uri: str, run_id: str, interval_s: float, node: str | None = None, resume: bool = False) -> Any:
    """A started MLflow ``SystemMetricsMonitor`` logging ``system/...`` into ``run_id`` every
    ``interval_s`` seconds; call ``.finish()`` on it. ``resume`` continues the step count of the run."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=resume, node_id=node, tracking_uri=uri
    )
    monitor.start()
    return monitor


# --------------------------------------------------------------------------------------------------
# Models: a pyfunc that takes RGB images of any size, the registry, aliases
# --------------------------------------------------------------------------------------------------

CHECKPOINT_ARTIFACT = "checkpoint"


def model_signature(tasks: list[str]) -> Any:
    """Dynamic batch, height and width: ``(-1, -1, -1, 3)`` uint8 in, per-task arrays out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    specs = {
        "depth": TensorSpec(np.dtype(np.float32), (-1, -1, -1), "depth"),
        "seg": TensorSpec(np.dtype(np.int32), (-1, -1, -1), "seg"),
        "normal": TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3), "normal"),
    }
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([specs[t] for t in ("depth", "seg", "normal") if t in tasks]),
    )


def pip_requirements() -> list[str]:
    """What loading the pyfunc needs (the vista code itself ships with the model), pinned to this env."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("torch", "torchvision", "timm", "numpy", "pillow", "pyyaml", "pydantic", "mlflow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """mlflow's fluent API (log_model, register_model) reads the process-wide tracking URI (the registry
    follows it): set it for the call, then put back what was there, so no later call of this process
    silently goes to this backend. ``set_tracking_uri`` also exports ``$MLFLOW_TRACKING_URI`` (which
    :func:`tracking_uri` reads first): that is put back as it was too."""
    import mlflow

    previous, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None if previous == env else previous)  # a URI from the environment stays there
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_model(
    uri: str, run_id: str, checkpoint: str | os.PathLike[str], tasks: list[str], step: int, name: str = "model"
) -> str:
    """Log ``checkpoint`` as a pyfunc model of run ``run_id``; returns its model id (URI ``models:/<model_id>``).
    ``step``: the epoch the checkpoint comes from; MLflow links what the run logged at that step to the model.

    The model is logged from code (``vista/mlflow_model.py``, which MLflow copies and runs at load time):
    nothing is cloudpickled.
    """
    import mlflow

    with _global_uri(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
            code_paths=[str(Path(__file__).parent)],  # the vista package: the model loads without it installed
            signature=model_signature(tasks),
            input_example=np.zeros((1, 32, 32, 3), np.uint8),
            pip_requirements=pip_requirements(),
            step=step,
        )
    return str(info.model_id)


EVAL_PREFIX = "eval/"  # the evaluate stage's metrics on a logged model (and its run), beside training's val/...


def log_model_metrics(
    uri: str, run_id: str, model_id: str, metrics: Mapping[str, float], step: int, dataset: tuple[str, str]
) -> None:
    """Metrics of logged model ``model_id`` (its evaluation), measured on ``dataset`` = ``(name, data
    version)``, keyed ``eval/<split>/<task>/<metric>``. MLflow records them in the model's run ``run_id``
    as well, at ``step`` (the training epoch the model comes from); the prefix keeps them apart from the
    run's training-time ``val/...`` curves."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    name, digest = dataset[0], dataset_digest(dataset[1])
    batch = [
        Metric(EVAL_PREFIX + k, float(v), now, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
        for k, v in metrics.items()
    ]
    _client(uri).log_batch(run_id, metrics=batch)


def register_model(uri: str, name: str, model_id: str, tags: Mapping[str, str]) -> str:
    """A new version of registered model ``name`` (created when missing) for logged model ``model_id``;
    returns the version."""
    import mlflow

    with _global_uri(uri):
        mv = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def describe(uri: str, name: str, description: str, version: str | None = None) -> None:
    """Set the (markdown) description of registered model ``name``, or of its ``version``."""
    client = _client(uri)
    if version is None:
        client.update_registered_model(name, description=description)
    else:
        client.update_model_version(name, version, description=description)


def find_version(uri: str, name: str, tag: str, value: str) -> str | None:
    """The newest version of ``name`` whose tag ``tag`` equals ``value`` (None when there is none)."""
    client = _client(uri)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return None
    versions = client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    hits = [int(v.version) for v in versions]
    return str(max(hits)) if hits else None


def version_model_id(mv: Any) -> str | None:
    """The logged model behind a registered ``ModelVersion``. The sqlite registry (mlflow 3.17) leaves the
    version's ``model_id`` empty; its source, ``models:/<model_id>`` for versions vista registers, names it."""
    rest = mv.source.removeprefix("models:/") if mv.source else ""
    return mv.model_id or (rest if rest != mv.source and "/" not in rest else None)


class Version(NamedTuple):
    """A registered model version: its number, tags and the evaluation metrics of its logged model."""

    version: str
    tags: dict[str, str]
    metrics: dict[str, float]


def version_by_alias(uri: str, name: str, alias: str) -> Version | None:
    """The version ``name@alias`` points to, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    model_id = version_model_id(mv)
    logged = (client.get_logged_model(model_id).metrics or []) if model_id else []
    # the evaluation (logged with its dataset), not what MLflow linked from the training run; the latest wins
    metrics = {
        m.key.removeprefix(EVAL_PREFIX): m.value
        for m in sorted(logged, key=lambda m: (m.step, m.timestamp))
        if m.dataset_name
    }
    return Version(str(mv.version), dict(mv.tags), metrics)


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    _client(uri).set_registered_model_alias(name, alias, version)


def download_checkpoint(uri: str, model_uri: str, dst: str | os.PathLike[str] | None = None) -> Path:
    """The training checkpoint inside a logged/registered vista model (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``, ``runs:/...``), downloaded to a local folder."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:  # mlflow resolves a models:/ URI's registry from the process-wide URI, whatever registry_uri says
        with _global_uri(uri):
            local = Path(download_artifacts(artifact_uri=model_uri, dst_path=dst, tracking_uri=uri, registry_uri=uri))
    except MlflowException as err:
        raise FileNotFoundError(f"{model_uri}: not found in the MLflow registry at {uri} ({err.message})") from None
    found = sorted((local / "artifacts").glob("*")) if (local / "artifacts").is_dir() else []
    if not found:
        raise ValueError(f"{model_uri}: not a vista model (no checkpoint under artifacts/ in {local})")
    return found[0]
