"""`vista tune` (DVC stage `tune`, beside the main path): a Ray Tune sweep over settings of params.yaml.

- Each trial is a Tune function trainable that applies its sampled values (dotted keys of params.yaml) to
  the base settings, re-validates them, and fits the Ray Train driver of ``pipelines.ray_train`` (Train V2:
  ``TorchTrainer`` inside the trial, ``TuneReportCallback`` forwarding each epoch's report), so ASHA sees
  every epoch and can stop weak trials early.
- Searchers: random (``BasicVariantGenerator``, also expands ``grid``) or Optuna TPE; scheduler ASHA on the
  epoch counter, or FIFO. Trial and worker resources, concurrency and storage come from ``params.tune``.
- The sweep's name derives from the settings (or ``tune.name``): running the same sweep again restores it
  (``Tuner.restore``) — finished trials are not re-run, unfinished ones resume from their checkpoints.
- MLflow: one parent run per sweep, one child run per trial (tag ``mlflow.parentRunId``) with the trial's
  params and per-epoch metrics; the parent gets ``results.parquet`` and plots (metric vs. each swept
  setting, parallel coordinates).
- Writes ``tune/results.parquet`` (one row per trial) and ``tune/best_params.yaml`` (the full settings with
  the best trial's values; it validates as a params file). ``vista tune promote`` shows the difference to
  params.yaml and writes the best values into it only when asked (``--write``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from vista import tracking
from vista.config import Params, ParamsError, validate_params, with_overrides
from vista.recipe import sweep_name

from . import ray_train
from . import train as train_stage

RESULTS_FILE = "results.parquet"
BEST_FILE = "best_params.yaml"
PLOT_DPI = 100


def metric_and_mode(params: Params) -> tuple[str, str]:
    return params.tune.metric or params.train.best_metric, params.tune.mode or params.train.best_mode


def trial_params(base: dict[str, Any], overrides: dict[str, Any]) -> Params:
    """The base settings with a trial's values applied, validated (the tune section stays as it was)."""
    return with_overrides(base, overrides)


def base_tree(params: Params) -> dict[str, Any]:
    """What every trial starts from: the settings with the sweep's per-trial scaling applied, and local
    paths made absolute (a trial runs in its own working directory, not the project's)."""
    tree = tracking.redacted_dump(params)
    for section, key in (("data", "root"), ("data", "prepared_dir"), ("data", "shards_dir"), ("train", "models_dir")):
        value = tree[section][key]
        if value and "://" not in value:
            tree[section][key] = str(Path(value).resolve())
    tp = params.tune
    tree["train"]["epochs"] = tp.scheduler.max_epochs or params.train.epochs
    tree["train"]["eval_every"] = 1  # the scheduler and searchers read the metric at every epoch
    if tp.workers:
        tree["train"]["workers"] = tp.workers
    if tp.resources_per_worker:
        tree["train"]["resources_per_worker"] = dict(tp.resources_per_worker)
    return tree


def check_space(params: Params) -> None:
    """Every corner of the search space validates (a bad value fails before any trial starts)."""
    base = base_tree(params)
    for key, spec in params.tune.search_space.items():
        ((kind, args),) = spec.items()
        if params.tune.searcher == "optuna" and kind == "grid":
            raise ParamsError(f"tune.search_space.{key}: grid needs searcher random (Optuna samples)")
        for value in args:
            try:
                trial_params(base, {key: value})
            except ParamsError as err:
                raise ParamsError(f"tune.search_space.{key}: value {value!r} is not valid ({err})") from None


def search_space(params: Params) -> dict[str, Any]:
    from ray import tune

    kinds = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    out = {}
    for key, spec in params.tune.search_space.items():
        ((kind, args),) = spec.items()
        out[key] = kinds[kind](args)
    return out


def run_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial = one Ray Train run, tracked as a child MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    params = trial_params(config["base"], config["overrides"])
    trial_id = tune.get_context().get_trial_id()  # stable across Tuner.restore
    uri, parent, sweep = tracking.from_driver(config["tracking_uri"]), config["parent_run_id"], config["sweep"]
    tags = {"mlflow.parentRunId": parent, "sweep": sweep, "trial_id": trial_id}
    tags.update({f"tune.{k}": json.dumps(v) for k, v in config["overrides"].items()})
    experiment = config.get("experiment") or params.experiment_name()  # absent in sweeps saved by older vista
    run_id = tracking.start_run(uri, experiment, f"{sweep}/{trial_id}", params.flatten(), tags)
    # how many times this trial's function started: > 1 when a restored sweep resumed it
    attempt = len(tracking.run_metrics_history(uri, run_id, "tune/attempt")) + 1
    tracking.log_metrics(uri, run_id, {"tune/attempt": attempt}, step=attempt)
    result, _ = ray_train.fit(
        params,
        (uri, run_id),
        name=trial_id,
        storage_path=config["train_storage"],
        callbacks=[TuneReportCallback()],
    )
    reason = f"{type(result.error).__name__}: {result.error}" if result.error else None
    tracking.end_run(uri, run_id, "FAILED" if result.error else "FINISHED", reason=reason)
    if result.error:
        raise RuntimeError(f"trial {trial_id} failed: {result.error}")


def storage_join(storage: str, *parts: str) -> str:
    """``storage``/parts for a folder or a URI whose query holds filesystem options
    (``s3://bucket/prefix?endpoint_override=host:port&scheme=http`` -> ``s3://bucket/prefix/a/b?...``)."""
    if "://" not in storage:
        return str(Path(storage, *parts))
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(storage)
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; write results.parquet and best_params.yaml; return the best trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    console = console or Console()
    tp = params.tune
    if not tp.search_space:
        raise ValueError(
            "tune.search_space is empty: add settings to sweep, e.g. model.attention.rank: {choice: [1, 3]}"
        )
    check_space(params)
    metric, mode = metric_and_mode(params)
    from vista.metrics import check_metric_key

    check_metric_key(metric, params.model.tasks, "tune.metric")
    train_stage.preflight(params)
    ray_train.require_shards(params)
    name = sweep_name(params)
    storage = ray_train.storage_location(tp.storage_path)
    uri = tracking.tracking_uri(params.tracking.uri)
    tracking.check_server(uri)
    experiment = params.experiment_name()  # the trials' too, whatever they sweep (child runs nest in the parent's)
    parent = tracking.start_run(
        uri, experiment, name, params.flatten(), {"sweep": name, "vista.kind": "sweep"}, ["params.yaml"]
    )
    max_epochs = tp.scheduler.max_epochs or params.train.epochs
    console.print(
        f"[bold]sweep {name}[/]: {tp.num_samples} samples of {', '.join(tp.search_space)}; {tp.searcher} search, "
        f"{tp.scheduler.type} to {max_epochs} epochs on {metric} ({mode}); MLflow parent run {parent}"
    )
    # save the sweep's state within ~2 s of a change (Ray's default waits up to 10 s), so that a killed
    # driver loses no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    worker_uri = tracking.for_workers(uri)  # Tune saves the config on disk: no credentials in it
    ray_train.ray_init(verbose=True)  # as before: Tune's reporter shows the trials, not the epoch feed
    config = {
        "overrides": search_space(params),
        "base": base_tree(params),
        "tracking_uri": worker_uri,
        "parent_run_id": parent,
        "experiment": experiment,
        "sweep": name,
        "train_storage": storage_join(storage, name, "_train"),
    }
    trainable = tune.with_resources(run_trial, dict(tp.trial_resources))
    path = storage_join(storage, name)
    if tune.Tuner.can_restore(path):
        console.print(f"resuming sweep {name} from {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True, param_space=config)
    else:
        if tp.scheduler.type == "asha":
            scheduler = ASHAScheduler(
                time_attr="epoch",
                max_t=max_epochs,
                grace_period=tp.scheduler.grace_period,
                reduction_factor=tp.scheduler.reduction_factor,
            )
        else:
            scheduler = FIFOScheduler()
        if tp.searcher == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=tp.seed)
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator

            # seeded (the same samples for the same seed); passed explicitly, it must get the concurrency cap itself
            search_alg = BasicVariantGenerator(random_state=tp.seed, max_concurrent=tp.max_concurrent_trials)
        tuner = tune.Tuner(
            trainable,
            param_space=config,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=tp.num_samples,
                scheduler=scheduler,
                search_alg=search_alg,
                max_concurrent_trials=tp.max_concurrent_trials,
                trial_dirname_creator=lambda trial: trial.trial_id,
                trial_name_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1),
        )
    grid = tuner.fit()
    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()
    return summarize(params, grid, name, uri, parent, console)


def summarize(params: Params, grid: Any, name: str, uri: str, parent: str, console: Console) -> dict[str, Any]:
    """results.parquet + best_params.yaml + plots; the parent run gets the summary."""
    import pandas as pd

    metric, mode = metric_and_mode(params)
    max_epochs = params.tune.scheduler.max_epochs or params.train.epochs
    keys = list(params.tune.search_space)
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
        # ASHA stops a trial by ending its process: its child run is closed here
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
    df = pd.DataFrame(rows).sort_values(f"best {metric}", ascending=mode == "min", na_position="last")
    # the best trial: the best value it ever reported (scope "all"), not its last one (ASHA may have cut it)
    best_result = grid.get_best_result(metric, mode, scope="all")
    best_overrides = {k: _plain(v) for k, v in best_result.config["overrides"].items()}
    best = df.set_index("trial_id").loc[best_result.metrics["trial_id"]]
    out = Path(params.tune.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / RESULTS_FILE, index=False)
    best_params = trial_params(params.model_dump(mode="json"), best_overrides)
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
    values = df[f"best {metric}"].dropna()
    tracking.log_metrics(uri, parent, {f"best {metric}".replace(" ", "_"): float(best[f"best {metric}"])}, step=0)
    tracking.end_run(uri, parent)

    table = Table("trial", *keys, "epochs", f"best {metric}", title=f"sweep {name}")
    for _, r in df.iterrows():
        table.add_row(
            str(r["trial_id"]),
            *(f"{_plain(r[k]):.4g}" if isinstance(_plain(r[k]), float) else str(_plain(r[k])) for k in keys),
            f"{r['epochs']}{' (stopped)' if r['stopped_early'] else ''}",
            f"{r[f'best {metric}']:.4f}",
        )
    console.print(table)
    console.print(
        f"best: {best_overrides} -> {metric} {best[f'best {metric}']:.4f} (spread over trials "
        f"{values.min():.4f} .. {values.max():.4f}); wrote {out / RESULTS_FILE}, {out / BEST_FILE}"
        + (f"; {grid.num_errors} trial(s) failed (column error)" if grid.num_errors else "")
    )
    return {"name": name, "best": best_overrides, "value": float(best[f"best {metric}"]), "trials": len(df)}


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


def promote(params_path: Path, best_path: Path, write: bool, console: Console | None = None) -> dict[str, tuple]:
    """The settings where ``best_params.yaml`` differs from ``params_path``; written into it (comments kept)
    only when ``write``."""
    from ruamel.yaml import YAML

    from vista.config import flatten, load_params

    console = console or Console()
    if not best_path.is_file():
        raise FileNotFoundError(f"{best_path}: no sweep result (run `vista tune` first)")
    best = validate_params(yaml.safe_load(best_path.read_text()))
    current = load_params(params_path)
    skip = ("tune.", "profiles.")
    a = {k: v for k, v in flatten(current.model_dump(mode="json")).items() if not k.startswith(skip)}
    b = {k: v for k, v in flatten(best.model_dump(mode="json")).items() if not k.startswith(skip)}
    diff = {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}
    if not diff:
        console.print(f"{params_path} already has the best values of {best_path}")
        return diff
    table = Table("setting", str(params_path), str(best_path), title="tune promote")
    for k, (old, new) in diff.items():
        table.add_row(k, repr(old), repr(new))
    console.print(table)
    if not write:
        console.print("nothing written (pass --write to apply these values to params.yaml)")
        return diff
    ry = YAML()  # round trip: comments and layout of params.yaml stay
    ry.preserve_quotes = True
    doc = ry.load(params_path.read_text())
    for key, (_, new) in diff.items():
        node = doc
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node or node[p] is None:
                node[p] = {}
            node = node[p]
        node[leaf] = new
    import io

    buf = io.StringIO()
    ry.dump(doc, buf)
    load_params_text(buf.getvalue(), params_path)  # validate before replacing the file
    params_path.write_text(buf.getvalue())
    console.print(f"wrote {len(diff)} value(s) into {params_path}")
    return diff


def load_params_text(text: str, where: Path) -> None:
    tree = yaml.safe_load(text)
    try:
        validate_params(tree)
    except ParamsError as err:
        raise ParamsError(f"{where} would become invalid: {err}") from None
