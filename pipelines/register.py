"""Stage `register`: the evaluated best model -> a version of the MLflow registered model.

- The model is logged into its training run as a pyfunc from code (``vista/mlflow_model.py``, nothing
  cloudpickled; uint8 RGB ``N×H×W×3`` in, any batch/H/W; per-task arrays out; the vista code, the checkpoint
  and pinned pip requirements ship with it) and registered as version N of
  ``registry.model_name``, tagged with all its evaluation metrics, the data version and the checkpoint hash.
- Alias ``challenger`` -> the new version. Alias ``champion`` moves to it only when its gate metric
  (``registry.gate_metric`` from ``eval/metrics.json``, default ``train.best_metric`` on ``eval.split``)
  beats the current champion's by more than ``registry.min_delta`` (or when there is no champion yet).
- Registering the same checkpoint again reuses its version (a forced re-run creates no duplicates).
- Writes ``models/registered.json`` (name, version, model URI, gate decision).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from vista import tracking
from vista.checkpoint import read_trained
from vista.config import Params, flatten

from .evaluate import EVAL_DIR

METRIC_TAG = "metric."  # version tags: metric.<split/task/metric> = value
SHA_TAG = "checkpoint_sha256"


def gate(params: Params) -> tuple[str, str]:
    """``(metric key, mode)`` of the champion gate."""
    reg, t = params.registry, params.train
    key = reg.gate_metric or f"{params.eval.split}/{t.best_metric.split('/', 1)[1]}"
    return key, reg.gate_mode or t.best_mode


def beats(new: float, old: float, mode: str, min_delta: float) -> bool:
    return new > old + min_delta if mode == "max" else new < old - min_delta


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    models = Path(params.train.models_dir)
    best, card_path, metrics_path = models / "best.pt", models / "model_card.json", EVAL_DIR / "metrics.json"
    for path, how in ((best, "vista train"), (card_path, "vista train"), (metrics_path, "vista evaluate")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run `{how}` first, or `dvc repro`)")
    _, trained = read_trained(best)  # what is registered is the model as trained, whatever params.yaml says now
    card = json.loads(card_path.read_text())
    metrics = {k: float(v) for k, v in flatten(json.loads(metrics_path.read_text()), sep="/").items()}
    key, mode = gate(params)
    if key not in metrics:
        raise ValueError(f"registry gate metric {key!r} is not in {metrics_path} (has: {sorted(metrics)})")
    value = metrics[key]
    reg = params.registry
    name = reg.model_name
    uri = tracking.tracking_uri(params.tracking.uri)
    tracking.check_server(uri)
    run_id = (card.get("mlflow") or {}).get("run_id")
    if not run_id:
        raise ValueError(f"{card_path}: no MLflow run id (train with this version of vista to get one)")
    sha = hashlib.sha256(best.read_bytes()).hexdigest()

    version = tracking.find_version(uri, name, SHA_TAG, sha)
    if version is not None:
        console.print(f"{best} is already registered as {name} version {version}")
        model_uri = f"models:/{name}/{version}"
    else:
        logged = tracking.log_model(uri, run_id, best, list(trained.model.tasks))
        tags = {
            SHA_TAG: sha,
            "data_version": card.get("data", {}).get("version", "unknown"),
            "model": trained.model.name,
            "gate_metric": key,
            **{f"{METRIC_TAG}{k}": f"{v:.6g}" for k, v in metrics.items()},
        }
        version = tracking.register_model(uri, name, logged, tags)
        model_uri = f"models:/{name}/{version}"
        console.print(f"registered {name} version {version} ({logged}, run {run_id})")
    tracking.set_alias(uri, name, "challenger", version)

    current = tracking.version_by_alias(uri, name, "champion")
    if current is None:
        promote, reason = True, "no champion yet"
    elif current[0] == version:
        promote, reason = True, f"version {version} is the champion already"
    else:
        old = current[1].get(f"{METRIC_TAG}{key}")
        if old is None:
            promote, reason = False, f"champion version {current[0]} has no {key} to compare; kept"
        else:
            promote = beats(value, float(old), mode, reg.min_delta)
            cmp = "beats" if promote else "does not beat"
            reason = f"{key} {value:.4f} {cmp} champion version {current[0]}'s {float(old):.4f} ({mode})"
            if current[1].get("data_version") != card.get("data", {}).get("version"):
                console.print(f"[yellow]note:[/] champion version {current[0]} was evaluated on other data")
    if promote:
        tracking.set_alias(uri, name, "champion", version)
    champion = version if promote else current[0]  # type: ignore[index]
    console.print(
        f"{name}: challenger -> version {version}; champion -> version {champion} ({reason})\n"
        f"load it with mlflow.pyfunc.load_model('models:/{name}@champion') or "
        f"`vista predict IMAGE --model models:/{name}@champion`"
    )
    record = {
        "name": name,
        "version": version,
        "model_uri": model_uri,
        "tracking_uri": tracking.redact(uri),
        "gate": {"metric": key, "mode": mode, "value": value, "promoted": promote, "reason": reason},
        "aliases": {"challenger": version, "champion": champion},
    }
    (models / "registered.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
