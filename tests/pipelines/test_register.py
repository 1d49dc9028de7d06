"""Stage `register`: pyfunc model in the MLflow registry, aliases, the champion gate, loading it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipelines import register
from pipelines.cli import app
from tests.helpers import smoke_params
from vista import tracking
from vista.config import Params
from vista.recipe import build_model

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Params, str]:
    """A project folder with what train and evaluate leave behind: models/best.pt, the model card with its
    MLflow run, eval/metrics.json."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = smoke_params()
    return params, uri


def write_outputs(params: Params, uri: str, miou: float, seed: int) -> None:
    """A (randomly initialised) trained model, its card and evaluation, as the train/evaluate stages do."""
    torch.manual_seed(seed)
    model = build_model(params)
    models = Path(params.train.models_dir)
    models.mkdir(exist_ok=True)
    torch.save(
        {"model": model.state_dict(), "params": params.model_dump(mode="json"), "epoch": 1, "metrics": {}},
        models / "best.pt",
    )
    run_id = tracking.start_run(uri, "vista", f"run{seed}", params.flatten())
    card = {"mlflow": {"tracking_uri": uri, "run_id": run_id}, "data": {"version": "d1"}}
    (models / "model_card.json").write_text(json.dumps(card))
    Path("eval").mkdir(exist_ok=True)
    metrics = {"val": {"seg": {"miou": miou, "pixel_acc": 0.5}, "depth": {"abs_rel": 0.3}}}
    Path("eval/metrics.json").write_text(json.dumps(metrics))


def aliases(uri: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return {k: str(v) for k, v in MlflowClient(uri).get_registered_model("vista").aliases.items()}


def test_champion_moves_only_when_the_gate_metric_improves(project: tuple[Params, str]) -> None:
    params, uri = project
    write_outputs(params, uri, miou=0.50, seed=1)
    rec = register.run(params)
    assert rec["version"] == "1" and rec["gate"]["promoted"]
    assert aliases(uri) == {"challenger": "1", "champion": "1"}

    write_outputs(params, uri, miou=0.40, seed=2)  # worse: a challenger, not the champion
    rec = register.run(params)
    assert rec["version"] == "2" and not rec["gate"]["promoted"]
    assert aliases(uri) == {"challenger": "2", "champion": "1"}
    assert json.loads(Path("models/registered.json").read_text())["aliases"] == {"challenger": "2", "champion": "1"}

    write_outputs(params, uri, miou=0.60, seed=3)  # better: champion moves
    rec = register.run(params)
    assert rec["version"] == "3" and rec["gate"]["promoted"]
    assert aliases(uri) == {"challenger": "3", "champion": "3"}

    # a forced re-run with the same checkpoint registers nothing new
    assert register.run(params)["version"] == "3"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    versions = {v.version: v for v in client.search_model_versions("name = 'vista'")}
    assert len(versions) == 3
    # each version: a few tags, its evaluation as metrics of its logged model, a description of what it is
    for v in versions.values():
        assert not [k for k in v.tags if k.startswith("metric.")], v.tags
        assert v.tags["data_version"] == "d1" and v.tags["dataset"] == "synthetic"
        logged = client.get_logged_model(tracking.version_model_id(v))
        assert {m.key for m in logged.metrics} == {
            "eval/val/seg/miou",
            "eval/val/seg/pixel_acc",
            "eval/val/depth/abs_rel",
        }
        assert {(m.dataset_name, m.dataset_digest) for m in logged.metrics} == {("synthetic", "d1")}
    miou = {
        v: next(
            m.value
            for m in client.get_logged_model(tracking.version_model_id(mv)).metrics
            if m.key == "eval/val/seg/miou"
        )
        for v, mv in versions.items()
    }
    assert miou == {1: 0.5, 2: 0.4, 3: 0.6}
    assert "val/seg/miou 0.4000" in versions[2].description and "kept as challenger" in versions[2].description
    assert "trained on **synthetic** (data version `d1`)" in versions[3].description
    assert "promoted to champion" in versions[3].description and "beats champion version 1" in versions[3].description
    model = client.get_registered_model("vista")
    assert "`@champion`: version 3" in model.description and "val/seg/miou 0.6000" in model.description

    # a lower-is-better gate: abs_rel 0.3 does not beat version 3's own 0.3 (ties keep the champion)
    write_outputs(params, uri, miou=0.90, seed=4)
    p = params.model_copy(
        update={"registry": params.registry.model_copy(update={"gate_metric": "val/depth/abs_rel", "gate_mode": "min"})}
    )
    rec = register.run(p)
    assert rec["version"] == "4" and not rec["gate"]["promoted"]
    assert aliases(uri) == {"challenger": "4", "champion": "3"}
    # the champion that stays is described with its own value of the gate metric
    assert "`@champion`: version 3" in client.get_registered_model("vista").description
    assert "val/depth/abs_rel 0.3000" in client.get_registered_model("vista").description


def test_registered_model_loads_as_pyfunc_and_predicts_any_size(project: tuple[Params, str], tmp_path: Path) -> None:
    import logging
    import warnings

    import mlflow
    from mlflow.artifacts import download_artifacts

    params, uri = project
    write_outputs(params, uri, miou=0.5, seed=1)
    # mlflow's loggers do not propagate to the root logger (where caplog listens): listen on "mlflow" itself
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("mlflow").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            register.run(params)
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    said = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert not [m for m in said if "cloudpickle" in m.lower()], said
    # a model from code: the model file ships in the model folder, and no pickled python model
    local = Path(download_artifacts("models:/vista@champion", dst_path=str(tmp_path / "dl"), tracking_uri=uri))
    assert (local / "mlflow_model.py").is_file(), sorted(p.name for p in local.iterdir())
    assert not list(local.rglob("python_model.pkl*")), sorted(p.name for p in local.iterdir())
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vista@champion")
    sig = model.metadata.signature
    assert sig.inputs.inputs[0].shape == (-1, -1, -1, 3)
    net = build_model(params)
    net.load_state_dict(torch.load("models/best.pt", weights_only=True)["model"])
    net.eval()
    for shape in ((2, 40, 56, 3), (1, 33, 47, 3)):
        images = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        out = model.predict(images)
        n, h, w, _ = shape
        assert out["depth"].shape == (n, h, w) and out["depth"].dtype == np.float32
        assert out["seg"].shape == (n, h, w) and out["seg"].dtype == np.int32
        assert out["normal"].shape == (n, h, w, 3)
        np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=-1), 1.0, atol=1e-4)
        # the same numbers as the torch model on the normalised images
        from vista.data.batch import IMAGENET_MEAN, IMAGENET_STD

        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
        with torch.no_grad():
            ref = net(x)
        np.testing.assert_allclose(out["depth"], ref["depth"][:, 0].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="(?i)schema|uint8"):
        model.predict(np.zeros((1, 32, 32, 3), np.float32))


def test_predict_cli_takes_a_registered_model(project: tuple[Params, str], tmp_path: Path) -> None:
    params, uri = project
    write_outputs(params, uri, miou=0.5, seed=1)
    register.run(params)
    Image.fromarray(np.zeros((36, 52, 3), np.uint8)).save(tmp_path / "a.png")
    runner = CliRunner()
    r = runner.invoke(app, ["predict", "a.png", "--model", "models:/vista@champion", "--out", "out"])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "a_seg.png") as im:
        assert im.size == (52, 36)
    r = runner.invoke(app, ["predict", "a.png", "--model", "models:/vista@nope", "--out", "out"])
    assert r.exit_code == 1 and "models:/vista@nope" in "".join(r.output.split("\n"))


def test_register_names_what_is_missing(project: tuple[Params, str]) -> None:
    params, uri = project
    with pytest.raises(FileNotFoundError, match="best.pt"):
        register.run(params)
    write_outputs(params, uri, miou=0.5, seed=1)
    p = params.model_copy(update={"registry": params.registry.model_copy(update={"gate_metric": "val/seg/nope"})})
    with pytest.raises(ValueError, match="val/seg/nope"):
        register.run(p)
