"""Ray Train (2 CPU workers, gloo) on smoke-sized shards: checkpoints, best model, resume."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import break_sample, smoke_params
from vista import recipe
from vista.data.webdata import data_version

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    import ray

    from pipelines.ray_train import ray_logging

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path("/tmp") / f"vr{os.getpid()}"  # Ray's socket paths must stay short
    # the console of `vista train` (without --verbose)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), **ray_logging())
    yield
    ray.shutdown()


def checkpoints(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]


def mlflow_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("vista/synthetic")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_two_workers_train_checkpoint_and_resume(tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import prepare, ray_train, shard, train
    from vista.tracking import run_metrics_history

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    p = smoke_params(tmp_path, "train.epochs=1", "tracking.system_metrics_s=0.5")
    prepare.run(p)
    shard.run(p)
    card = train.run(p)
    run_dir = tmp_path / "ray" / recipe.run_name(p)
    assert len(checkpoints(run_dir)) == 1
    assert [h["epoch"] for h in card["history"]] == [0, 1]
    best = torch.load(tmp_path / "models" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and "val/seg/miou" in best["metrics"]
    assert (tmp_path / "models" / "samples.png").is_file()
    saved = json.loads((tmp_path / "models" / "model_card.json").read_text())
    assert saved["data"]["version"] == data_version(tmp_path / "shards" / "synthetic")

    (run,) = mlflow_runs(uri)
    assert run.data.params["model.name"] == "vista_r18" and run.data.params["train.epochs"] == "1"
    assert run.data.tags["data_version"] == saved["data"]["version"]
    # one experiment per dataset, opened by the MLflow UI as model training (not GenAI)
    from mlflow import MlflowClient

    exp = MlflowClient(uri).get_experiment(run.info.experiment_id)
    assert exp.name == "vista/synthetic" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # the training data as the run's dataset input (the runs table's Dataset column)
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "synthetic" and saved["data"]["version"].startswith(data.dataset.digest)
    assert str(tmp_path / "shards" / "synthetic") in data.dataset.source
    assert {t.key: t.value for t in data.tags} == {"mlflow.data.context": "training"}
    assert [s for s, _ in run_metrics_history(uri, run.info.run_id, "val/seg/miou")] == [0, 1]
    assert run_metrics_history(uri, run.info.run_id, "system/cpu_utilization_percentage")  # rank 0's monitor
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"params.yaml", "model_card.json"} <= artifacts and "images" in artifacts

    # the same settings with more epochs resume the same run from its last checkpoint
    p2 = smoke_params(tmp_path, "train.epochs=2", "tracking.system_metrics_s=0.5")
    assert recipe.run_name(p2) == recipe.run_name(p)
    card2 = train.run(p2)
    assert [h["epoch"] for h in card2["history"]] == [0, 1, 2]
    assert card2["history"][1] == card["history"][1]  # epoch 1 was not trained again
    # retention (train.keep_checkpoints=1): the best evaluated epoch and the latest, nothing else
    scores = {h["epoch"]: h["val/seg/miou"] for h in card2["history"][1:]}
    kept = {torch.load(d / ray_train.CHECKPOINT_FILE, weights_only=True)["epoch"] for d in checkpoints(run_dir)}
    assert kept == {max(scores, key=scores.get), 2}
    (run,) = mlflow_runs(uri)  # still one MLflow run, with one continuous history
    assert [s for s, _ in run_metrics_history(uri, run.info.run_id, "val/seg/miou")] == [0, 1, 2]

    # evaluate: the best model on the val shards, one process, gives the metrics the 2 ranks reported
    from pipelines import evaluate

    monkeypatch.chdir(tmp_path)
    results = evaluate.run(p2)
    for k, v in results.items():
        assert v == pytest.approx(card2["metrics"][k], rel=1e-5, abs=1e-6), k
    per_class = {k.rsplit("/", 1)[1]: v for k, v in results.items() if k.startswith("val/seg/iou/")}
    assert per_class and set(per_class) <= {"floor", "ceiling", "wall", "sphere", "box", "cylinder"}  # names
    assert results["val/seg/miou"] == pytest.approx(sum(per_class.values()) / len(per_class))
    nested = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert nested["val"]["seg"]["miou"] == results["val/seg/miou"]
    assert nested["val"]["seg"]["iou"] == per_class
    # training logged each class's IoU to MLflow at every evaluation, beside the mIoU
    some = next(iter(per_class))
    assert run_metrics_history(uri, run.info.run_id, f"val/seg/iou/{some}")
    with open(tmp_path / "eval" / "plots" / "history.csv") as f:
        curve = list(csv.DictReader(f))
    evaluated = [r for r in card2["history"] if "val/seg/miou" in r]
    assert [int(r["epoch"]) for r in curve] == [r["epoch"] for r in evaluated]  # evaluated epochs only
    assert all(float(r["val/seg/miou"]) >= 0 and r["train/elapsed_s"] != "" for r in curve[1:])
    rows = (tmp_path / "eval" / "plots" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted,count" and len(rows) == 1 + 6 * 6

    # register: a pyfunc version of the registered model, logged into the training run
    from pipelines import register

    rec = register.run(p2)
    assert rec["version"] == "1" and rec["aliases"] == {"challenger": "1", "champion": "1"}
    assert rec["gate"]["value"] == results["val/seg/miou"]
    version = MlflowClient(uri).get_model_version("vista", "1")
    assert version.run_id == run.info.run_id and version.tags["data_version"] == saved["data"]["version"]
    # the evaluation as metrics of the logged model (on the training data's name and digest), no metric.* tags
    from vista.tracking import version_model_id

    assert not [k for k in version.tags if k.startswith("metric.")], version.tags
    (logged,) = MlflowClient(uri).search_logged_models([run.info.experiment_id])
    assert logged.model_id == version_model_id(version) and logged.source_run_id == run.info.run_id
    evaluation = {m.key: m.value for m in logged.metrics if m.dataset_name}
    assert evaluation == pytest.approx({f"eval/{k}": v for k, v in results.items()})
    assert {(m.dataset_name, m.dataset_digest) for m in logged.metrics if m.dataset_name} == {
        ("synthetic", data.dataset.digest)
    }
    # and what training logged at the model's epoch (not at init), linked by MLflow
    assert {m.step for m in logged.metrics} == {card2["best_epoch"]}
    training = {m.key: m.value for m in logged.metrics if not m.dataset_name}
    assert training["epoch"] == card2["best_epoch"] and "train/loss" in training
    assert training["val/seg/miou"] == pytest.approx(card2["metrics"]["val/seg/miou"])
    assert f"trained on **synthetic** (data version `{data.dataset.digest}`)" in version.description
    assert f"run `{recipe.run_name(p2)}`" in version.description and "promoted to champion" in version.description
    assert "`@champion`: version 1" in MlflowClient(uri).get_registered_model("vista").description

    # other settings: another run
    assert recipe.run_name(smoke_params(tmp_path, "train.lr=1e-3")) != recipe.run_name(p)


def test_checkpoint_retention_ranks_unevaluated_epochs_last(
    tmp_path: Path, ray_local, capfd: pytest.CaptureFixture[str]
) -> None:
    """``keep_checkpoints=1`` with a min-mode metric and ``eval_every=2``: epoch 1 (no evaluation) is deleted,
    not kept as the "best"; the best evaluated epoch and the latest stay, and best.pt is the best one.
    The same run has a bad sample in each split and ``data.on_bad_sample=skip``: they are dropped and
    counted (MLflow metrics ``train/skipped_samples`` and ``val/skipped_samples``), the run finishes.
    The console shows one line per epoch, with the metric on evaluated epochs, and no Ray report dumps."""
    import io

    from rich.console import Console

    from pipelines import prepare, ray_train, shard, train
    from vista.tracking import run_metrics_history

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    p = smoke_params(
        tmp_path,
        "train.epochs=3",
        "train.eval_every=2",
        "train.best_metric=val/depth/abs_rel",
        "train.best_mode=min",
        f"tracking.uri={uri}",
        "tracking.system_metrics_s=0",
        "data.on_bad_sample=skip",
    )
    prepare.run(p)
    shard.run(p)
    shards = tmp_path / "shards" / "synthetic"
    break_sample(shards, "train-000000.tar")
    break_sample(shards, "val-000000.tar")
    capfd.readouterr()
    console = Console(file=io.StringIO(), width=200)
    card = train.run(p, console)
    scores = {h["epoch"]: h["val/depth/abs_rel"] for h in card["history"][1:] if "val/depth/abs_rel" in h}
    assert sorted(scores) == [2, 3]
    text = console.file.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["0/3", "1/3", "2/3", "3/3"], text
    assert ["val/depth/abs_rel" in line for line in lines] == [True, False, True, True]
    assert f"val/depth/abs_rel {scores[3]:.4f}" in lines[3] and "samples/s" in lines[3]
    assert "skipped bad samples" in lines[0] and "val 1" in lines[0]
    out = capfd.readouterr()
    for printed in (text, out.out, out.err):
        assert "Reporting training result" not in printed and "'train/loss':" not in printed
    run_dir = tmp_path / "ray" / recipe.run_name(p)
    kept = {torch.load(d / ray_train.CHECKPOINT_FILE, weights_only=True)["epoch"] for d in checkpoints(run_dir)}
    assert kept == {min(scores, key=scores.get), 3}
    best = torch.load(tmp_path / "models" / "best.pt", weights_only=True)
    assert best["epoch"] == min(scores, key=scores.get)

    (run,) = mlflow_runs(uri)
    # the val split (one shard per rank) is read whole at init and at epochs 2 and 3: one bad sample each time
    assert run_metrics_history(uri, run.info.run_id, "val/skipped_samples") == [(0, 1.0), (2, 1.0), (3, 1.0)]
    train_skips = run_metrics_history(uri, run.info.run_id, "train/skipped_samples")
    assert [s for s, _ in train_skips] == [1, 2, 3] and sum(v for _, v in train_skips) >= 1
