"""Ray Tune sweeps (smoke-sized, 2 CPUs): ASHA stops trials early, MLflow nests trials under the sweep,
best_params.yaml validates, an interrupted sweep resumes without re-running finished trials, promote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import ROOT, smoke_params
from vista.config import ParamsError, load_params, validate_params

pytestmark = pytest.mark.timeout(900)

SPACE = (
    "tune.search_space={model.attention.rank: {choice: [1, 2, 3, 5]}, model.attention.tau_m: {loguniform: [0.3, 3.0]}}"
)


def sweep_params(tmp: Path, *extra: str):
    return smoke_params(
        tmp,
        *[
            "data.num_train=16",
            SPACE,
            "tune.num_samples=4",
            "tune.scheduler.max_epochs=4",
            "tune.resources_per_worker={CPU: 0.99}",
            f"tune.storage_path={tmp / 'tune_runs'}",
            f"tune.out_dir={tmp / 'tune'}",
            "tracking.log_images=0",
            "tracking.system_metrics_s=0",
            *extra,
        ],
    )


@pytest.fixture
def shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from pipelines import prepare, shard

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", f"/tmp/vt{os.getpid()}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    p = sweep_params(tmp_path)
    prepare.run(p)
    shard.run(p)
    return tmp_path


def test_asha_sweep_nests_trials_in_mlflow_and_writes_valid_best_params(shards: Path) -> None:
    from mlflow import MlflowClient

    from pipelines import tune

    # a grid over lr puts a trial that cannot learn (lr 1e-9) second: ASHA compares it at epoch 1 with the
    # first trial (lr 1e-3) and must stop it; rank and tau_m are sampled (seeded)
    p = sweep_params(
        shards,
        "tune.search_space={model.attention.rank: {choice: [1, 2, 3, 5]}, "
        "model.attention.tau_m: {loguniform: [0.3, 3.0]}, train.lr: {grid: [1.0e-3, 1.0e-9]}}",
        "tune.num_samples=1",
        "tune.scheduler.max_epochs=2",
    )
    best = tune.run(p)
    df = pd.read_parquet(shards / "tune" / "results.parquet")
    assert len(df) == 2 and best["trials"] == 2
    assert df["stopped_early"].any(), df.to_string()  # ASHA saw every epoch and stopped a weak trial
    assert df.loc[df["train.lr"] == 1e-9, "stopped_early"].any(), df.to_string()
    assert (df["epochs"] == 2).any()  # and let the best one run to max_epochs
    assert set(df["model.attention.rank"]) <= {1, 2, 3, 5}
    assert df["model.attention.tau_m"].between(0.3, 3.0).all()

    written = yaml.safe_load((shards / "tune" / "best_params.yaml").read_text())
    bp = validate_params(written)  # a valid params file
    assert bp.model.attention.rank == best["best"]["model.attention.rank"]

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("vista/synthetic").experiment_id])
    parents = [r for r in runs if r.data.tags.get("vista.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    for child in children:
        assert child.data.params["model.attention.rank"] in {"1", "2", "3", "5"}
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/seg/miou")]
        assert steps and steps == sorted(steps) and steps[0] == 0
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.parquet", "best_params.yaml", "metric_vs_params.png", "parallel_coordinates.png"} <= artifacts


# per swept rank: the val metric a toy trial reports at epochs 1, 2, ...; whether it then raises
TOY_CURVES = {
    1: ([0.5, 0.9, 0.6], False),
    2: ([0.7, 0.8, 0.8], False),
    3: ([0.3], True),
    4: ([float("nan")], False),  # diverged: never the best trial, sorted last
    5: ([0.4, 0.45], False),
}


def toy_trial(config: dict) -> None:
    """A trial without training: opens its child run (left RUNNING, as ASHA leaves a stopped trial's run),
    reports its curve, and fails when told to."""
    from ray import tune

    from vista import tracking

    rank = config["overrides"]["model.attention.rank"]
    curve, fail = TOY_CURVES[rank]
    trial_id = tune.get_context().get_trial_id()
    tags = {"mlflow.parentRunId": config["parent_run_id"], "trial_id": trial_id, "rank": str(rank)}
    tracking.start_run(config["tracking_uri"], config["experiment"], f"{config['sweep']}/{trial_id}", {}, tags)
    for epoch, value in enumerate(curve, start=1):
        tune.report({"epoch": epoch, config["metric"]: value})
    if fail:
        raise ValueError("toy trial failed")


def test_summary_best_and_final_values_child_runs_and_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summarize() on a real ResultGrid of toy trials: best = the best value a trial ever reported (the peak
    of rank 1 beats the steadier rank 2, whose last value is higher), final = its last value; stopped and
    failed trials are marked; every child run is closed; the parent run gets the table and the figures."""
    import ray
    from mlflow import MlflowClient
    from ray import tune as rtune
    from rich.console import Console

    from pipelines import tune_report
    from vista import tracking
    from vista.recipe import metric_and_mode

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", f"/tmp/vt{os.getpid()}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    p = sweep_params(
        tmp_path, "tune.search_space={model.attention.rank: {choice: [1, 2, 3, 5]}}", "tune.scheduler.max_epochs=3"
    )
    metric, mode = metric_and_mode(p)
    assert mode == "max"
    parent = tracking.start_run(uri, p.experiment_name(), "toy", {}, {"vista.kind": "sweep"})
    space = {
        "overrides": rtune.grid_search([{"model.attention.rank": r} for r in TOY_CURVES]),
        "tracking_uri": uri,
        "parent_run_id": parent,
        "experiment": p.experiment_name(),
        "sweep": "toy",
        "metric": metric,
    }
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        grid = rtune.Tuner(
            rtune.with_resources(toy_trial, {"CPU": 0.5}),
            param_space=space,
            tune_config=rtune.TuneConfig(metric=metric, mode=mode),
            run_config=rtune.RunConfig(name="toy", storage_path=str(tmp_path / "tune_runs"), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    best = tune_report.summarize(p, grid, "toy", uri, parent, Console(quiet=True))

    assert best["best"] == {"model.attention.rank": 1} and best["value"] == pytest.approx(0.9) and best["trials"] == 5
    df = pd.read_parquet(tmp_path / "tune" / "results.parquet").set_index("model.attention.rank")
    assert list(df.index) == [1, 2, 5, 3, 4]  # by best value
    assert df[f"best {metric}"].tolist() == pytest.approx([0.9, 0.8, 0.45, 0.3, float("nan")], nan_ok=True)
    assert df[f"final {metric}"].tolist() == pytest.approx([0.6, 0.8, 0.45, 0.3, float("nan")], nan_ok=True)
    assert df["epochs"].tolist() == [3, 3, 2, 1, 1]
    assert df["stopped_early"].tolist() == [False, False, True, False, True]  # a failed trial did not stop early
    assert df["error"].notna().tolist() == [False, False, False, True, False]
    assert (
        validate_params(yaml.safe_load((tmp_path / "tune" / "best_params.yaml").read_text())).model.attention.rank == 1
    )

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("vista/synthetic").experiment_id])
    children = {int(r.data.tags["rank"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert {r: c.info.status for r, c in children.items()} == {
        1: "FINISHED",
        2: "FINISHED",
        3: "FAILED",
        4: "FINISHED",
        5: "FINISHED",
    }
    assert children[5].data.tags["tune.stopped_early"] == "true" and children[5].data.tags["tune.epochs"] == "2"
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics[f"best {metric}".replace(" ", "_")] == pytest.approx(0.9)
    for name in ("metric_vs_params.png", "parallel_coordinates.png"):
        logged = Path(client.download_artifacts(parent, name, str(tmp_path / "dl")))
        assert logged.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name  # a figure logged as PNG
        assert (tmp_path / "tune" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name  # and written beside


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(shards: Path) -> None:
    """Kill the sweep's driver after its first trial finished; running it again completes the sweep, and the
    finished trial's Ray Train run is not trained again."""
    sets = [
        "data.prepared_dir=prepared",  # relative to the project folder (the command's cwd), not the trial's
        "data.shards_dir=shards",
        "data.num_train=16",
        SPACE,
        "tune.num_samples=2",  # one trial after the other (tune.max_concurrent_trials: 1)
        "tune.scheduler.type=fifo",
        "tune.scheduler.max_epochs=1",
        "tune.workers=1",
        "tune.resources_per_worker={CPU: 0.99}",
        f"tune.storage_path={shards / 'tune_runs'}",
        f"tune.out_dir={shards / 'tune'}",
        "tracking.log_images=0",
        "tracking.system_metrics_s=0",
    ]
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = smoke_params(None, *sets)
    from vista.recipe import sweep_name

    uri = os.environ["MLFLOW_TRACKING_URI"]
    proc = subprocess.Popen(cmd, cwd=shards, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 400
    done_before: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None and not done_before:
        done_before = finished_trials(uri)  # a trial's child run is FINISHED once its function returned
        time.sleep(1)
    assert done_before and proc.poll() is None, "the sweep ended before it could be interrupted"
    time.sleep(5)  # the sweep saves its state within ~2 s
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    again = subprocess.run(cmd, cwd=shards, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming sweep" in again.stdout.replace("\n", "")
    df = pd.read_parquet(shards / "tune" / "results.parquet")
    assert len(df) == 2 and (df["epochs"] == 1).all()

    from mlflow import MlflowClient

    from vista.tracking import find_run

    attempts = {}
    for trial in df["trial_id"]:
        run_id = find_run(uri, p.experiment_name(), f"{sweep_name(p)}/{trial}")
        attempts[trial] = len(MlflowClient(uri).get_metric_history(run_id, "tune/attempt"))
    # trials that finished before the kill were not started again; the others ran (or resumed) after it
    assert all(attempts[t] == 1 for t in done_before), attempts
    assert set(df["trial_id"]) >= done_before


def finished_trials(uri: str) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("vista/synthetic")
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    return {r.data.tags["trial_id"] for r in runs if "trial_id" in r.data.tags}


def test_search_space_errors_name_the_setting(tmp_path: Path) -> None:
    from pipelines.tune import check_space

    with pytest.raises(ParamsError, match="model.nope is not a setting"):
        load_params(ROOT / "params.yaml", ["tune.search_space={model.nope: {choice: [1]}}"])
    with pytest.raises(ParamsError, match="train.lr: uniform needs"):
        load_params(ROOT / "params.yaml", ["tune.search_space={train.lr: {uniform: [1, 0]}}"])
    p = load_params(ROOT / "params.yaml", ["tune.search_space={train.optimizer: {choice: [adamw, lion]}}"])
    with pytest.raises(ParamsError, match="train.optimizer: value 'lion'"):
        check_space(p)
    p = load_params(ROOT / "params.yaml", ["tune.searcher=optuna", "tune.search_space={train.lr: {grid: [0.1]}}"])
    with pytest.raises(ParamsError, match="grid needs searcher random"):
        check_space(p)


def test_promote_shows_the_diff_and_writes_only_when_asked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    best = load_params(params_file, ["model.attention.rank=5", "train.lr=0.001"]).model_dump(mode="json")
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best))
    runner = CliRunner()
    r = runner.invoke(app, ["tune", "promote", "--params", str(params_file), "--best", str(tmp_path / "best.yaml")])
    assert r.exit_code == 0, r.output
    flat = "".join(r.output.split("\n"))
    assert "model.attention.rank" in flat and "train.lr" in flat and "nothing written" in flat
    assert params_file.read_text() == (ROOT / "params.yaml").read_text()
    args = ["tune", "promote", "--params", str(params_file), "--best", str(tmp_path / "best.yaml"), "--write"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    after = load_params(params_file)
    assert after.model.attention.rank == 5 and after.train.lr == 0.001
    assert "# The single source of every setting" in params_file.read_text()  # comments kept


def test_storage_join_keeps_filesystem_options_at_the_end() -> None:
    from pipelines.tune import storage_join

    s3 = "s3://bucket/tune?endpoint_override=127.0.0.1:9000&scheme=http"
    assert (
        storage_join(s3, "sweep", "_train")
        == "s3://bucket/tune/sweep/_train?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert storage_join("/data/tune", "sweep") == "/data/tune/sweep"
