"""The report of a finished sweep (:mod:`pipelines.tune`): ``results.parquet`` (one row per trial: its
values, epochs, whether ASHA stopped it, its error, the final and the best value of the metric),
``best_params.yaml`` (the full settings with the best trial's values), the figures, the summary on the
sweep's MLflow parent run, and the console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from vista import tracking
from vista.config import Params, with_overrides
from vista.recipe import metric_and_mode

RESULTS_FILE = "results.parquet"
BEST_FILE = "best_params.yaml"
PLOT_DPI = 100


def summarize(params: Params, grid: Any, name: str, uri: str, parent: str, console: Console) -> dict[str, Any]:
    """results.parquet + best_params.yaml + plots; the parent run gets the summary."""
    metric, mode = metric_and_mode(params)
    keys = list(params.tune.search_space)
    df = trial_table(params, grid, name, uri)
    # the best trial: the best value it ever reported (scope "all"), not its last one (ASHA may have cut it)
    best_result = grid.get_best_result(metric, mode, scope="all")
    best_overrides = {k: _plain(v) for k, v in best_result.config["overrides"].items()}
    best = df.set_index("trial_id").loc[best_result.metrics["trial_id"]]
    out = Path(params.tune.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / RESULTS_FILE, index=False)
    best_params = with_overrides(params.model_dump(mode="json"), best_overrides)
    header = (
        f"# best trial {best.name} of sweep {name}: {metric} = {best[f'best {metric}']:.6g} ({mode})\n"
        f"# swept: {', '.join(f'{k}={best_overrides[k]!r}' for k in keys)}\n"
        "# `vista tune promote` shows the difference to params.yaml; `--write` applies it\n"
    )
    tree = best_params.model_dump(mode="json")
    (out / BEST_FILE).write_text(header + yaml.safe_dump(tree, sort_keys=False))

    tracking.log_artifact_bytes(uri, parent, RESULTS_FILE, (out / RESULTS_FILE).read_bytes())
    tracking.log_artifact_bytes(uri, parent, BEST_FILE, (out / BEST_FILE).read_bytes())
    figures = plots(df, keys, metric)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    for fname, fig in figures.items():
        tracking.log_figure(uri, parent, fig, fname, dpi=PLOT_DPI)
        fig.savefig(out / fname, dpi=PLOT_DPI)
        plt.close(fig)
    tracking.log_metrics(uri, parent, {f"best {metric}".replace(" ", "_"): float(best[f"best {metric}"])}, step=0)
    tracking.end_run(uri, parent)

    print_table(console, df, keys, metric, name)
    values = df[f"best {metric}"].dropna()
    console.print(
        f"best: {best_overrides} -> {metric} {best[f'best {metric}']:.4f} (spread over trials "
        f"{values.min():.4f} .. {values.max():.4f}); wrote {out / RESULTS_FILE}, {out / BEST_FILE}"
        + (f"; {grid.num_errors} trial(s) failed (column error)" if grid.num_errors else "")
    )
    return {"name": name, "best": best_overrides, "value": float(best[f"best {metric}"]), "trials": len(df)}


def trial_table(params: Params, grid: Any, name: str, uri: str) -> Any:
    """One row per trial that reported anything, best first: its values, epochs, whether ASHA stopped it,
    its error, its last and its best value of the metric. Closes each trial's MLflow child run (ASHA stops
    a trial by ending its process) and tags it with its epochs and whether it stopped early."""
    import pandas as pd

    metric, mode = metric_and_mode(params)
    max_epochs = params.tune.scheduler.max_epochs or params.train.epochs
    # one row per trial that reported anything: its last report, and the report where the metric was best
    final = grid.get_dataframe()
    if "trial_id" not in final:
        first = f": {grid.errors[0]}" if grid.errors else ""
        raise RuntimeError(f"sweep {name}: no trial reported any result ({grid.num_errors} failed){first}")
    final = final.set_index("trial_id")
    nan = float("nan")
    try:
        peak = grid.get_dataframe(filter_metric=metric, filter_mode=mode).set_index("trial_id")
    except ValueError:
        # a trial reported the metric only as NaN: Ray's idxmax raises under pandas 3 (Ray catches TypeError
        # only); take each trial's best value from its own history then
        peak = pd.DataFrame(
            {metric: {r.metrics["trial_id"]: _best_value(r.metrics_dataframe, metric, mode) for r in grid if r.metrics}}
        )
    rows = []
    for result in grid:  # what the data frames do not say: the trial's error; and its MLflow child run
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id not in final.index:
            continue
        epochs = int(final.at[trial_id, "epoch"]) if "epoch" in final and pd.notna(final.at[trial_id, "epoch"]) else 0
        stopped = result.error is None and epochs < max_epochs
        child = tracking.find_run(uri, params.experiment_name(), f"{name}/{trial_id}")
        if child is not None:
            tracking.end_run(uri, child, "FAILED" if result.error else "FINISHED")
            tracking.set_tags(uri, child, {"tune.stopped_early": str(stopped).lower(), "tune.epochs": str(epochs)})
        rows.append(
            {
                "trial_id": trial_id,
                **dict(result.config["overrides"]),
                "epochs": epochs,
                "stopped_early": stopped,
                "error": str(result.error)[:500] if result.error else None,
                f"final {metric}": float(final.at[trial_id, metric]) if metric in final else nan,
                f"best {metric}": float(peak.at[trial_id, metric])
                if trial_id in peak.index and metric in peak
                else nan,
            }
        )
    return pd.DataFrame(rows).sort_values(f"best {metric}", ascending=mode == "min", na_position="last")


def print_table(console: Console, df: Any, keys: list[str], metric: str, name: str) -> None:
    """The trials, best first: their values, epochs (stopped early or not) and best value of the metric."""
    table = Table("trial", *keys, "epochs", f"best {metric}", title=f"sweep {name}")
    for _, r in df.iterrows():
        table.add_row(
            str(r["trial_id"]),
            *(f"{_plain(r[k]):.4g}" if isinstance(_plain(r[k]), float) else str(_plain(r[k])) for k in keys),
            f"{r['epochs']}{' (stopped)' if r['stopped_early'] else ''}",
            f"{r[f'best {metric}']:.4f}",
        )
    console.print(table)


def _best_value(history: Any, metric: str, mode: str) -> float:
    values = history[metric].dropna() if history is not None and metric in history else []
    return float(values.max() if mode == "max" else values.min()) if len(values) else float("nan")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (YAML, validation)."""
    return value.item() if hasattr(value, "item") else value


def plots(df: Any, keys: list[str], metric: str) -> dict[str, Any]:
    """Matplotlib figures by PNG file name: the metric against each swept setting, and parallel coordinates of
    all trials (the caller saves and closes them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    col = f"best {metric}"
    out = {}
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        x = df[key]
        if x.dtype == object:
            cats = sorted(x.astype(str).unique())
            ax.set_xticks(range(len(cats)), cats)
            x = x.astype(str).map({c: i for i, c in enumerate(cats)})
        ax.scatter(x, df[col])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    out["metric_vs_params.png"] = fig

    cols = [*keys, col]
    data = np.stack([pd_numeric(df[c]) for c in cols], axis=1)
    lo, hi = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
    norm = (data - lo) / np.where(hi > lo, hi - lo, 1)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(cols), 3.5))
    cmap = plt.get_cmap("viridis")
    score = norm[:, -1]
    for row, s in zip(norm, score, strict=True):
        ax.plot(range(len(cols)), row, color=cmap(0.0 if np.isnan(s) else s), alpha=0.8)
    ax.set_xticks(
        range(len(cols)), [f"{c}\n[{a:.3g}, {b:.3g}]" for c, a, b in zip(cols, lo, hi, strict=True)], fontsize=7
    )
    ax.set_yticks([])
    ax.set_title("trials (colour: metric)")
    fig.tight_layout()
    out["parallel_coordinates.png"] = fig
    return out


def pd_numeric(series: Any) -> Any:
    import pandas as pd

    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.isna().all():
        cats = sorted(series.astype(str).unique())
        return series.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float)
    return numeric.to_numpy(dtype=float)
