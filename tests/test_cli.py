"""The `vista` CLI: train with the smoke profile, clear errors for bad settings."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import ROOT

runner = CliRunner()


def test_train_without_shards_says_what_to_run(tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke", "--set", f"data.shards_dir={tmp_path}"],
    )
    assert r.exit_code == 1
    assert "no shards" in "".join(r.output.split("\n")) and "vista shard" in "".join(r.output.split("\n"))


def test_bad_override_exits_2_naming_the_key() -> None:
    r = runner.invoke(app, ["train", "--params", str(ROOT / "params.yaml"), "--set", "train.epochs=-1"])
    assert r.exit_code == 2
    assert "train.epochs=-1" in r.output


def test_models_lists_the_registry() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "vista_official_r101" in r.output


def test_best_metric_of_a_missing_task_is_refused_before_training(tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke", "--set", "model.tasks=[depth]"],
    )
    assert r.exit_code == 1
    assert "train.best_metric='val/seg/miou'" in "".join(r.output.split("\n"))
