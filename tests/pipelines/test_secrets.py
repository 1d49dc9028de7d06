"""Credentials in tracking URIs never leave memory, and a dead tracking server fails fast with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.helpers import ROOT, smoke_params
from vista import tracking

SECRET_URI = "http://alice:s3cr3t-pw@127.0.0.1:9"  # port 9 (discard): refused at once
runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://alice:pw@host:5000", "http://***@host:5000"),
        ("https://token@host/path?q=1", "https://***@host/path?q=1"),
        ("error at http://u:p@h:1/api and s3://u:p@bucket/key", "error at http://***@h:1/api and s3://***@bucket/key"),
        ("sqlite:////work/main/mlflow.db", "sqlite:////work/main/mlflow.db"),
        ("http://host/a?mail=x@y.org", "http://host/a?mail=x@y.org"),
        ("models:/vista@champion", "models:/vista@champion"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert tracking.redact(text) == expected


def test_mlflow_params_and_tags_are_stored_redacted(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "r", {"tracking.uri": SECRET_URI, "a": 1}, {"origin": SECRET_URI})
    tracking.set_tags(uri, run_id, {"later": SECRET_URI})
    tracking.end_run(uri, run_id, "FAILED", reason=f"could not reach {SECRET_URI}")
    run = MlflowClient(uri).get_run(run_id)
    stored = repr(run.data.params) + repr(run.data.tags)
    assert "s3cr3t" not in stored and "alice" not in stored
    assert run.data.params["tracking.uri"] == "http://***@127.0.0.1:9"
    assert run.data.tags[tracking.FAILURE_TAG] == "could not reach http://***@127.0.0.1:9"
    assert run.info.status == "FAILED"


def test_dataset_source_is_stored_redacted(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "r", {})
    tracking.log_dataset(uri, run_id, "camvid", "ab" * 32, f"{SECRET_URI}/shards/camvid")
    (entry,) = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert entry.dataset.name == "camvid" and entry.dataset.digest == "ab" * 6
    assert entry.dataset.source_type == "http" and "s3cr3t" not in entry.dataset.source
    assert "http://***@127.0.0.1:9/shards/camvid" in entry.dataset.source
    assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": "training"}


def test_checkpoint_settings_are_redacted() -> None:

    p = smoke_params(None, *[f"tracking.uri={SECRET_URI}"])
    tree = tracking.redacted_dump(p)
    assert "s3cr3t" not in repr(tree) and tree["tracking"]["uri"] == "http://***@127.0.0.1:9"
    assert p.tracking.uri == SECRET_URI  # the live settings keep what the client needs


@pytest.mark.parametrize("how", ["set", "env"])
def test_dead_tracking_server_fails_fast_in_one_redacted_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"]
    args += ["--set", f"data.shards_dir={tmp_path}", "--set", f"train.models_dir={tmp_path / 'models'}"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if how == "set":
        args += ["--set", f"tracking.uri={SECRET_URI}"]
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    r = runner.invoke(app, args)
    out = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert "error: MLflow tracking server http://***@127.0.0.1:9 did not answer" in out
    assert "s3cr3t" not in r.output and "alice" not in r.output and "Traceback" not in r.output
    # checked before anything else: no shards were looked for (there are none), Ray never started
    assert "no shards" not in out and not (tmp_path / "models").exists()
    import ray

    assert not ray.is_initialized()


def test_credentials_reach_ray_workers_through_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Ray gets as task arguments (and Tune saves on disk) is redacted; workers read the real URI
    from the environment the driver exports and passes on as Ray's runtime env."""
    import os

    from pipelines import ray_train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert ray_train.for_workers("sqlite:///x.db") == "sqlite:///x.db" and ray_train.ray_env() == {}
    handed = ray_train.for_workers(SECRET_URI)
    assert handed == "http://***@127.0.0.1:9" and os.environ["MLFLOW_TRACKING_URI"] == SECRET_URI
    assert ray_train.ray_env() == {"MLFLOW_TRACKING_URI": SECRET_URI}
    assert ray_train.from_driver(handed) == SECRET_URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConnectionError, match=r"http://\*\*\*@127\.0\.0\.1:9: its credentials stay on the driver"):
        ray_train.from_driver(handed)
