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

from rich.console import Console

from vista import tracking
from vista.config import Params, ParamsError, with_overrides
from vista.recipe import metric_and_mode, preflight, sweep_name

from . import ray_train
from .tune_report import summarize


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
    uri, parent, sweep = ray_train.from_driver(config["tracking_uri"]), config["parent_run_id"], config["sweep"]
    tags = {"mlflow.parentRunId": parent, "sweep": sweep, "trial_id": trial_id}
    tags.update({f"tune.{k}": json.dumps(v) for k, v in config["overrides"].items()})
    run_id = tracking.start_run(uri, config["experiment"], f"{sweep}/{trial_id}", params.flatten(), tags)
    # how many times this trial's function started: > 1 when a restored sweep resumed it
    attempt = len(tracking.run_metrics_history(uri, run_id, "tune/attempt")) + 1
    tracking.log_metrics(uri, run_id, {"tune/attempt": attempt}, step=attempt)
    result = ray_train.fit(
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


def check_sweep(params: Params) -> tuple[str, str]:
    """What can fail before Ray starts, checked first: the search space (not empty, every corner valid),
    the metric, the model (:func:`vista.recipe.preflight`), the shards. Returns the metric and its mode."""
    from vista.metrics import check_metric_key

    if not params.tune.search_space:
        raise ValueError(
            "tune.search_space is empty: add settings to sweep, e.g. model.attention.rank: {choice: [1, 3]}"
        )
    check_space(params)
    metric, mode = metric_and_mode(params)
    check_metric_key(metric, params.model.tasks, "tune.metric")
    preflight(params)
    ray_train.require_shards(params)
    return metric, mode


def scheduler_and_searcher(params: Params) -> dict[str, Any]:
    """``TuneConfig``'s ``scheduler`` (ASHA on the epoch counter, or FIFO) and ``search_alg`` (random,
    seeded, also expanding ``grid``; or Optuna TPE) of ``params.tune``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tp = params.tune
    if tp.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=tp.scheduler.max_epochs or params.train.epochs,
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
    return {"scheduler": scheduler, "search_alg": search_alg}


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; write results.parquet and best_params.yaml; return the best trial."""
    import ray
    from ray import tune

    console = console or Console()
    tp = params.tune
    metric, mode = check_sweep(params)
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
    worker_uri = ray_train.for_workers(uri)  # Tune saves the config on disk: no credentials in it
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
        tune_config = tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=tp.num_samples,
            **scheduler_and_searcher(params),
            max_concurrent_trials=tp.max_concurrent_trials,
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: trial.trial_id,
        )
        run_config = tune.RunConfig(name=name, storage_path=storage, verbose=1)
        tuner = tune.Tuner(trainable, param_space=config, tune_config=tune_config, run_config=run_config)
    grid = tuner.fit()
    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()
    return summarize(params, grid, name, uri, parent, console)
