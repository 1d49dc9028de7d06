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

import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vista.config import Params, ParamsError, StudyParams, with_overrides
from vista.recipe import settings_digest

from . import ray_train
from . import train as train_stage

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
    base = params.model_dump(mode="json")
    if seeds:
        unknown = sorted(set(seeds) - set(study.seeds))
        if unknown:
            raise ParamsError(f"study {name!r}: seeds {unknown} not among its seeds {list(study.seeds)}")
        seeds = [s for s in study.seeds if s in seeds]
    else:
        seeds = list(study.seeds)
    seeds = seeds[:1] if smoke else seeds
    # seed-major: an interrupted study has every model at its first seeds
    plan = [(m, s, run_settings(base, study, name, m, s, smoke, overrides)) for s in seeds for m in study.models]
    for model, _, p in plan:  # fail before any training on a metric no run can report
        tasks = set(p.model.tasks)
        if not any(k.split("/")[1] in tasks for k in study.metrics):
            raise ParamsError(f"study {name!r}: model {model} has none of the metrics {list(study.metrics)}")
    console.rule(f"[bold]study {name}: {len(study.models)} models × {len(seeds)} seeds")
    shards_checked: set[str] = set()
    rows = []
    for i, (model, seed, p) in enumerate(plan, 1):
        key = f"{p.data.shards_dir}/{p.data.dataset}"
        if key not in shards_checked:
            _ensure_shards(p, console)
            shards_checked.add(key)
        out = Path(p.train.models_dir)
        card_path, wall_path = out / "model_card.json", out / "study_run.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        console.rule(f"[{i}/{len(plan)}] {model} seed {seed}")
        if card.get("run_name") == p.train.run_name and wall_path.is_file():
            console.print(f"finished earlier ({card_path}); not trained again")
            wall = json.loads(wall_path.read_text())["wall_s"]
        else:
            tic = time.perf_counter()
            card = train_stage.run(p, console, tags={"vista.study": name, "vista.seed": str(seed)}, verbose=verbose)
            wall = time.perf_counter() - tic
            wall_path.write_text(json.dumps({"wall_s": wall, "run_name": p.train.run_name}) + "\n")
        final = _final(card["history"])
        speeds = [r["train/samples_per_s"] for r in card["history"] if "train/samples_per_s" in r]
        rows.append(
            {
                "model": model,
                "seed": seed,
                "run_name": p.train.run_name,
                "mlflow_run_id": card.get("mlflow", {}).get("run_id", ""),
                "epochs": final.get("epoch", 0),
                "train_s": final.get("train/elapsed_s", math.nan),
                "wall_s": wall,
                "samples_per_s": statistics.median(speeds) if speeds else math.nan,
                **{m: final.get(m, math.nan) for m in study.metrics},
                "per_class": {k.removeprefix(PER_CLASS): v for k, v in final.items() if k.startswith(PER_CLASS)},
                "history": card["history"],
            }
        )
    out_dir = Path(study.runs_dir) / name / "results" if smoke else Path(study.out_dir) / name
    write_results(rows, study, name, out_dir, console)
    return rows


PER_CLASS = "val/seg/iou/"  # the final evaluation's IoU of each class, when the model segments


def per_class_summary(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], list[float]]]:
    """``(classes, models, {(class, model): [IoU of each seed]})`` of the runs' final per-class IoU; classes
    in the order the first run reports them (the dataset's), a class a run did not report left out of it."""
    classes = list(dict.fromkeys(c for r in rows for c in r.get("per_class", {})))
    models = list(dict.fromkeys(r["model"] for r in rows if r.get("per_class")))
    values = {
        (c, m): [r["per_class"][c] for r in rows if r["model"] == m and c in r.get("per_class", {})]
        for c in classes
        for m in models
    }
    return classes, models, values


def summarize(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per model: mean and sample standard deviation over seeds of each metric, wall-clock and speed."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        row: dict[str, Any] = {"model": model, "runs": len(mine)}
        for key in (*metrics, "epochs", "train_s", "wall_s", "samples_per_s"):
            values = [float(r[key]) for r in mine if not math.isnan(float(r[key]))]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        out.append(row)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return (
        statistics.fmean(values) if values else math.nan,
        statistics.stdev(values) if len(values) > 1 else math.nan,
    )


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def write_results(
    rows: list[dict[str, Any]], study: StudyParams, name: str, out_dir: Path, console: Console
) -> dict[str, Path]:
    """``runs.csv``, ``summary.csv``, ``table.md``, ``curves.png`` (and ``per_class.csv``) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = study.metrics
    files = {k: out_dir / f for k, f in [("runs", "runs.csv"), ("summary", "summary.csv"), ("table", "table.md")]}
    columns = ["model", "seed", *metrics, "epochs", "train_s", "wall_s", "samples_per_s", "run_name", "mlflow_run_id"]
    with open(files["runs"], "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows, metrics)
    with open(files["summary"], "w", newline="") as f:
        w = csv.DictWriter(f, list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    head = ["model", *metrics, "epochs", "train s", "wall s", "samples/s"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    table = Table(*head, title=f"study {name} (mean ± std over {max(r['runs'] for r in summary)} seed(s))")
    for r in summary:
        cells = [r["model"], *(_pm(r[f"{m}_mean"], r[f"{m}_std"], 4) for m in metrics)]
        cells += [_pm(r[f"{k}_mean"], r[f"{k}_std"], d) for k, d in (("epochs", 1), ("train_s", 0), ("wall_s", 0))]
        cells.append(_pm(r["samples_per_s_mean"], r["samples_per_s_std"], 2))
        lines.append(f"| {' | '.join(cells)} |")
        table.add_row(*cells)
    classes, models, values = per_class_summary(rows)
    if classes:  # per-class IoU side by side: one row per class, one column per model (mean ± std over seeds)
        files["per_class"] = out_dir / "per_class.csv"
        with open(files["per_class"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "model", "runs", "iou_mean", "iou_std"])
            for (c, m), v in values.items():
                w.writerow([c, m, len(v), *_mean_std(v)])
        lines += ["", f"| class | {' | '.join(models)} |", "|" + "---|" * (len(models) + 1)]
        per = Table("class", *models, title=f"study {name}: val IoU per class (final evaluation)")
        for c in classes:
            cells = [c, *(_pm(*_mean_std(values[c, m]), 3) for m in models)]
            lines.append(f"| {' | '.join(cells)} |")
            per.add_row(*cells)
        console.print(per)
    files["table"].write_text("\n".join(lines) + "\n")
    files["curves"] = out_dir / "curves.png"
    plot_curves(rows, metrics, files["curves"], name)
    console.print(table)
    console.print(f"results: {', '.join(str(p) for p in files.values())}")
    return files


def plot_curves(rows: list[dict[str, Any]], metrics: tuple[str, ...], path: Path, name: str) -> None:
    """Each metric against training wall-clock seconds: one colour per model, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for r in rows:
            points = [(h.get("train/elapsed_s", math.nan), h[metric]) for h in r["history"] if metric in h]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            colour = colours[models.index(r["model"]) % len(colours)]
            first = r["seed"] == min(q["seed"] for q in rows if q["model"] == r["model"])
            ax.plot(x, y, marker=".", color=colour, alpha=0.8, label=r["model"] if first else None)
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"study {name}: val metrics against training time (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
