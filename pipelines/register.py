"""Stage `register`: the evaluated best model -> a version of the MLflow registered model.

- The model is logged into its training run as a pyfunc from code (``vista/mlflow_model.py``, nothing
  cloudpickled; uint8 RGB ``N×H×W×3`` in, any batch/H/W; per-task arrays out; the vista code, the checkpoint
  and pinned pip requirements ship with it) and registered as version N of
  ``registry.model_name``, tagged with the dataset, data version, model name, gate metric and checkpoint
  hash. Its evaluation metrics (``eval/metrics.json``, keys ``split/task/metric``) are logged as metrics of
  the logged model, linked to the dataset and data version (MLflow records them in the training run too,
  at the model's epoch); what training logged at that epoch (train loss, val metrics as the ranks measured
  them) is linked to the model by MLflow itself.
- Descriptions (markdown, shown in the MLflow UI): each new version says what was trained on which data
  version, its gate metric and the gate decision; the registered model says what its aliases hold.
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
from vista.files import write_json

from .outputs import EVAL_DIR

SHA_TAG = "checkpoint_sha256"


def gate(params: Params) -> tuple[str, str]:
    """``(metric key, mode)`` of the champion gate."""
    reg, t = params.registry, params.train
    key = reg.gate_metric or f"{params.eval.split}/{t.best_metric.split('/', 1)[1]}"
    return key, reg.gate_mode or t.best_mode


def beats(new: float, old: float, mode: str, min_delta: float) -> bool:
    return new > old + min_delta if mode == "max" else new < old - min_delta


def summary(info: dict[str, str], key: str, value: float | str | None) -> str:
    """``vista_r18 trained on synthetic (data version 1a2b3c4d5e6f), val/seg/miou 0.6123`` (markdown)."""
    number = f"{float(value):.4f}" if value is not None else "not measured"
    data = tracking.dataset_digest(info.get("data_version", "unknown"))
    model, dataset = info.get("model", "?"), info.get("dataset", "?")
    return f"**{model}** trained on **{dataset}** (data version `{data}`), {key} {number}"


def model_description(params: Params, champion: str, held: str, challenger: str) -> str:
    """The registered model's description (markdown): what its versions are and what its aliases hold."""
    key, mode = gate(params)
    name, delta = params.registry.model_name, params.registry.min_delta
    margin = f", by more than {delta:g}" if delta else ""
    return (
        "VISTA-Net multi-task models registered by `vista register`, one version per trained checkpoint; "
        "each version's evaluation metrics are on its logged model.\n\n"
        f"- `@champion`: version {champion}, {held}. It moves only to a version whose {key} beats it "
        f"({mode}{margin}).\n"
        f"- `@challenger`: the version registered last, {challenger}.\n\n"
        f'Load: `mlflow.pyfunc.load_model("models:/{name}@champion")`'
    )


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    """Register ``models/best.pt`` (once per checkpoint), alias it challenger, and champion when it passes
    the gate; describe the version and the model; write ``models/registered.json``."""
    console = console or Console()
    models = Path(params.train.models_dir)
    best, state, trained, card, metrics = read_inputs(params)
    key, mode = gate(params)
    value, reg = metrics[key], params.registry
    name = reg.model_name
    uri = tracking.tracking_uri(params.tracking.uri)
    tracking.check_server(uri)
    run_id = card["mlflow"]["run_id"]
    sha = hashlib.sha256(best.read_bytes()).hexdigest()
    data = card.get("data", {})
    dataset, data_version = data.get("dataset") or trained.data.dataset, data.get("version", "unknown")

    version = tracking.find_version(uri, name, SHA_TAG, sha)
    created = version is None
    epoch = int(card.get("best_epoch", state.get("epoch", 0)))  # the model's epoch in its training run
    if created:
        model_id = tracking.log_model(uri, run_id, best, list(trained.model.tasks), epoch)
        # its evaluation, on the dataset and data version it was trained on (also recorded in the run)
        tracking.log_model_metrics(uri, run_id, model_id, metrics, epoch, (dataset, data_version))
        tags = {SHA_TAG: sha, "data_version": data_version, "dataset": dataset, "model": trained.model.name}
        version = tracking.register_model(uri, name, model_id, {**tags, "gate_metric": key})
        console.print(f"registered {name} version {version} (models:/{model_id}, run {run_id})")
    else:
        console.print(f"{best} is already registered as {name} version {version}")
    tracking.set_alias(uri, name, "challenger", version)

    current = tracking.version_by_alias(uri, name, "champion")
    promote, reason, old = decide(params, version, value, current, data_version, console)
    if promote:
        tracking.set_alias(uri, name, "champion", version)
    champion = version if promote else current.version  # type: ignore[union-attr]
    this = {"model": trained.model.name, "dataset": dataset, "data_version": data_version}
    if created:  # what this version is, and the decision taken when it came in
        origin = f"run `{card.get('run_name') or run_id}`, epoch {epoch}"
        verdict = f"promoted to champion: {reason}" if promote else f"kept as challenger: {reason}"
        tracking.describe(uri, name, f"{summary(this, key, value)}; {origin}.\n\nGate: {verdict}.", version)
    # a champion that stays is described by its own tags and metrics
    held = summary(this, key, value) if promote else summary(current.tags, key, old)  # type: ignore[union-attr]
    tracking.describe(uri, name, model_description(params, champion, held, version))
    console.print(
        f"{name}: challenger -> version {version}; champion -> version {champion} ({reason})\n"
        f"load it with mlflow.pyfunc.load_model('models:/{name}@champion') or "
        f"`vista predict IMAGE --model models:/{name}@champion`"
    )
    record = {
        "name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "tracking_uri": tracking.redact(uri),
        "gate": {"metric": key, "mode": mode, "value": value, "promoted": promote, "reason": reason},
        "aliases": {"challenger": version, "champion": champion},
    }
    write_json(models / "registered.json", record)
    return record


def read_inputs(params: Params) -> tuple[Path, dict[str, Any], Params, dict[str, Any], dict[str, float]]:
    """``(models/best.pt, its state, the settings it was trained with, its model card, the evaluation's
    metrics)``; a missing file names the command that writes it, a missing gate metric the file."""
    models = Path(params.train.models_dir)
    best, card_path, metrics_path = models / "best.pt", models / "model_card.json", EVAL_DIR / "metrics.json"
    for path, how in ((best, "vista train"), (card_path, "vista train"), (metrics_path, "vista evaluate")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run `{how}` first, or `dvc repro`)")
    state, trained = read_trained(best)  # what is registered is the model as trained, whatever params.yaml says now
    card = json.loads(card_path.read_text())
    if not (card.get("mlflow") or {}).get("run_id"):
        raise ValueError(f"{card_path}: no MLflow run id (train with this version of vista to get one)")
    metrics = {k: float(v) for k, v in flatten(json.loads(metrics_path.read_text()), sep="/").items()}
    key, _ = gate(params)
    if key not in metrics:
        raise ValueError(f"registry gate metric {key!r} is not in {metrics_path} (has: {sorted(metrics)})")
    return best, state, trained, card, metrics


def decide(
    params: Params, version: str, value: float, current: Any, data_version: str, console: Console
) -> tuple[bool, str, float | None]:
    """The gate: ``(promote, reason, the champion's value)`` for ``version`` scoring ``value`` against the
    ``current`` champion (``None``: there is none)."""
    key, mode = gate(params)
    if current is None:
        return True, "no champion yet", None
    if current.version == version:
        return True, f"version {version} is the champion already", None
    old = current.metrics.get(key)
    if old is None:
        return False, f"champion version {current.version} has no {key} to compare; kept", None
    promote = beats(value, float(old), mode, params.registry.min_delta)
    cmp = "beats" if promote else "does not beat"
    reason = f"{key} {value:.4f} {cmp} champion version {current.version}'s {float(old):.4f} ({mode})"
    if current.tags.get("data_version") != data_version:
        console.print(f"[yellow]note:[/] champion version {current.version} was evaluated on other data")
    return promote, reason, old
