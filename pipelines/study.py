"""`vista study NAME`: an equal-budget comparison of models, several seeds each, on one dataset.

A study (``studies.<NAME>`` in params.yaml) names the models, the seeds, a profile and overrides shared
by every run (e.g. ``train.time_budget_s``: every model gets the same wall-clock). Each model × seed is
one ordinary training run (``pipelines.train.run``: Ray Train workers, MLflow run, best checkpoint) in
the MLflow experiment ``study-<NAME>``, tagged with the study, model and seed. Runs that finished are
not trained again (their model card is reused), so an interrupted study continues where it stopped.

Writes ``<out_dir>/<NAME>/``: ``runs.csv`` (one row per run: final val metrics — the last evaluation,
not a best-of — epochs, training and total wall-clock, samples/s), ``summary.csv`` and ``table.md``
(mean ± std over seeds per model) and ``curves.png`` (each metric against training wall-clock seconds);
for segmentation models also ``per_class.csv`` and a second table in ``table.md``: the final evaluation's
IoU of each class, models side by side.

``--smoke`` shrinks the study to seconds for CI: the ``smoke`` profile, the first seed, a few seconds
of budget, and outputs under ``runs_dir``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from vista.config import Params, ParamsError, StudyParams, with_overrides
from vista.files import write_json
from vista.recipe import settings_digest

from . import ray_train
from . import train as train_stage
from .study_report import PER_CLASS, write_results

SMOKE = {"train.time_budget_s": 3.0, "train.epochs": 20, "train.eval_every": 1, "tracking.log_images": 0}


def study_of(params: Params, name: str) -> StudyParams:
    if name not in params.studies:
        raise ParamsError(f"study {name!r} not in params.yaml studies (have: {sorted(params.studies)})")
    return params.studies[name]


def run_settings(
    base: dict[str, Any],
    study: StudyParams,
    name: str,
    model: str,
    seed: int,
    smoke: bool = False,
    extra: dict[str, Any] | None = None,
) -> Params:
    """The settings of one run: params.yaml → the study's profile → its overrides → the model's own
    overrides → ``extra`` (the command line's ``--set``) → (smoke) → model, seed, where the run writes."""
    profiles = base.get("profiles") or {}
    changes: dict[str, Any] = {}
    if study.profile is not None:
        if study.profile not in profiles:
            raise ParamsError(f"study {name!r}: profile {study.profile!r} not in params.yaml profiles")
        changes.update(profiles[study.profile])
    changes.update(study.overrides)
    changes.update(study.model_overrides.get(model, {}))
    changes.update(extra or {})
    runs = Path(study.runs_dir) / name
    if smoke:
        changes.update(profiles.get("smoke", {}))
        changes.update(SMOKE)
        changes["data.prepared_dir"] = str(runs / "data" / "prepared")
        changes["data.shards_dir"] = str(runs / "data" / "shards")
    changes.update({"model.name": model, "train.seed": seed, "tracking.experiment": f"study-{name}"})
    changes.update({"train.storage_path": str(runs / "ray"), "train.models_dir": str(runs / f"{model}-s{seed}")})
    params = with_overrides(base, changes)
    digest = settings_digest(params)
    return with_overrides(params.model_dump(mode="json"), {"train.run_name": f"{name}-{model}-s{seed}-{digest}"})


def _ensure_shards(params: Params, console: Console) -> None:
    """Prepare and shard the dataset when its shards are missing (a study is one command)."""
    from . import prepare, shard

    try:
        ray_train.require_shards(params)
    except FileNotFoundError:
        console.print(f"no shards of {params.data.dataset} yet: preparing and sharding them first")
        prepare.run(params, console)
        shard.run(params, console)


def _final(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluated epoch (the model the budget produced; no best-of-epochs selection)."""
    evaluated = [r for r in history if any(k.startswith("val/") for k in r)]
    return evaluated[-1] if evaluated else {}


def run(
    params: Params,
    name: str,
    smoke: bool = False,
    console: Console | None = None,
    overrides: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Train every model × seed of study ``name`` (skipping finished runs); write the tables and plot.

    Args:
        overrides: dotted settings applied to every run after the study's own (``--set``).
        seeds: only these of the study's seeds (``--seeds``; e.g. to split a study across machines or
            sessions); the tables then cover these seeds.
        verbose: Ray's own logs and the workers' output too (``pipelines.train.run``).
    """
    console = console or Console()
    study = study_of(params, name)
    plan = plan_runs(params, study, name, smoke, overrides, seeds)
    console.rule(f"[bold]study {name}: {len(study.models)} models × {len({s for _, s, _ in plan})} seeds")
    shards_checked: set[str] = set()
    rows = []
    for i, (model, seed, p) in enumerate(plan, 1):
        key = f"{p.data.shards_dir}/{p.data.dataset}"
        if key not in shards_checked:
            _ensure_shards(p, console)
            shards_checked.add(key)
        console.rule(f"[{i}/{len(plan)}] {model} seed {seed}")
        card, wall = train_or_reuse(p, name, seed, console, verbose)
        rows.append(result_row(model, seed, p, card, wall, study.metrics))
    out_dir = Path(study.runs_dir) / name / "results" if smoke else Path(study.out_dir) / name
    write_results(rows, study, name, out_dir, console)
    return rows


def plan_runs(
    params: Params,
    study: StudyParams,
    name: str,
    smoke: bool,
    overrides: dict[str, Any] | None,
    seeds: list[int] | None,
) -> list[tuple[str, int, Params]]:
    """``(model, seed, settings)`` of every run, seed-major (an interrupted study has every model at its
    first seeds); fails before any training on a seed the study does not have, or a metric no run can
    report."""
    if seeds:
        unknown = sorted(set(seeds) - set(study.seeds))
        if unknown:
            raise ParamsError(f"study {name!r}: seeds {unknown} not among its seeds {list(study.seeds)}")
        seeds = [s for s in study.seeds if s in seeds]
    else:
        seeds = list(study.seeds)
    seeds = seeds[:1] if smoke else seeds
    base = params.model_dump(mode="json")
    plan = [(m, s, run_settings(base, study, name, m, s, smoke, overrides)) for s in seeds for m in study.models]
    for model, _, p in plan:
        tasks = set(p.model.tasks)
        if not any(k.split("/")[1] in tasks for k in study.metrics):
            raise ParamsError(f"study {name!r}: model {model} has none of the metrics {list(study.metrics)}")
    return plan


def train_or_reuse(p: Params, name: str, seed: int, console: Console, verbose: bool) -> tuple[dict[str, Any], float]:
    """``(model card, wall-clock seconds)`` of the run: trained now, or read back when it finished earlier
    (its card names these settings' run and its wall-clock was recorded)."""
    out = Path(p.train.models_dir)
    card_path, wall_path = out / "model_card.json", out / "study_run.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card.get("run_name") == p.train.run_name and wall_path.is_file():
        console.print(f"finished earlier ({card_path}); not trained again")
        return card, json.loads(wall_path.read_text())["wall_s"]
    tic = time.perf_counter()
    card = train_stage.run(p, console, tags={"vista.study": name, "vista.seed": str(seed)}, verbose=verbose)
    wall = time.perf_counter() - tic
    write_json(wall_path, {"wall_s": wall, "run_name": p.train.run_name})
    return card, wall


def result_row(
    model: str, seed: int, p: Params, card: dict[str, Any], wall: float, metrics: Sequence[str]
) -> dict[str, Any]:
    """A run's row of the study: its final evaluation's metrics and per-class IoU, epochs, training and
    wall-clock seconds, median speed, history."""
    final = _final(card["history"])
    speeds = [r["train/samples_per_s"] for r in card["history"] if "train/samples_per_s" in r]
    return {
        "model": model,
        "seed": seed,
        "run_name": p.train.run_name,
        "mlflow_run_id": card.get("mlflow", {}).get("run_id", ""),
        "epochs": final.get("epoch", 0),
        "train_s": final.get("train/elapsed_s", math.nan),
        "wall_s": wall,
        "samples_per_s": statistics.median(speeds) if speeds else math.nan,
        **{m: final.get(m, math.nan) for m in metrics},
        "per_class": {k.removeprefix(PER_CLASS): v for k, v in final.items() if k.startswith(PER_CLASS)},
        "history": card["history"],
    }
