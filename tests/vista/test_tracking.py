"""MLflow experiments as vista creates them: model training, one per dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vista import tracking


def test_experiments_are_model_training_without_overwriting_a_kind(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    kind = tracking.EXPERIMENT_KIND_TAG
    created = tracking.experiment_id(uri, "vista/synthetic")
    assert client.get_experiment(created).tags[kind] == "custom_model_development"
    # an experiment made before (no kind: the MLflow UI opens it as GenAI) gets the kind when vista uses it
    old = client.create_experiment("vista")
    assert kind not in client.get_experiment(old).tags
    assert tracking.experiment_id(uri, "vista") == old
    assert client.get_experiment(old).tags[kind] == "custom_model_development"
    # a kind someone chose stays
    theirs = client.create_experiment("theirs", tags={kind: "genai_development"})
    tracking.start_run(uri, "theirs", "r", {})
    assert client.get_experiment(theirs).tags[kind] == "genai_development"


def test_fluent_calls_leave_the_tracking_uri_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """log_model/register_model set MLflow's process-wide URI for the call; ``set_tracking_uri`` also exports
    it as $MLFLOW_TRACKING_URI, which vista reads first: both are as before afterwards."""
    import mlflow

    mine, theirs = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    mlflow.set_tracking_uri(None)  # no URI left set by an earlier test in this process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", theirs)
    with tracking._global_uri(mine):
        assert mlflow.get_tracking_uri() == mine
    assert os.environ["MLFLOW_TRACKING_URI"] == theirs and tracking.tracking_uri() == theirs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mine)  # the next project's URI (e.g. the next test) is followed
    assert mlflow.get_tracking_uri() == mine
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking._global_uri(mine):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() != mine
    mlflow.set_tracking_uri(None)  # MLflow's default, as before this test


def test_default_tracking_db_is_at_the_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No URI configured: ``mlflow.db`` (artifacts in ``mlartifacts/`` beside it) in the working directory, or
    at $DVC_ROOT when DVC runs the stage (an experiment in a temporary copy logs into the project's db)."""
    from mlflow import MlflowClient

    project = tmp_path.resolve()
    copy = project / ".dvc" / "tmp" / "exps" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(project))
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{project / 'mlflow.db'}"
    assert tracking.tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # a configured URI wins
    exp = tracking.experiment_id(uri, "vista/synthetic")
    assert MlflowClient(uri).get_experiment(exp).artifact_location == (project / "mlartifacts").as_uri()
    assert (project / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
