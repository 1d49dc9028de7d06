"""The results of a study (:mod:`pipelines.study`): ``runs.csv`` (one row per run), ``summary.csv`` and
``table.md`` (mean ± std over seeds per model; for segmentation models also ``per_class.csv`` and a
per-class table, models side by side) and ``curves.png`` (each metric against training seconds)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vista.config import StudyParams

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
