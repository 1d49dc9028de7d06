"""MLflow experiments as vista creates them: model training, one per dataset."""

from __future__ import annotations

from pathlib import Path

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
