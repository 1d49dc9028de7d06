"""`vista study`: the equal-budget comparison in its smoke mode (every model of the synthetic study, one
seed, a few seconds of budget each), its tables, plot, MLflow runs and resumption."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest

from tests.helpers import ROOT
from vista.config import ParamsError, load_params

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path("/tmp") / f"vs{os.getpid()}"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    yield
    ray.shutdown()


def test_study_smoke_runs_every_model_and_writes_the_comparison(
    tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from pipelines import study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # two of the study's four models (the attention model and the segmentation-only peer): each run costs a
    # Ray Train start-up, and the other two go through the same code
    p = load_params(
        ROOT / "params.yaml",
        [f"studies.synthetic.runs_dir={tmp_path / 'runs'}", "studies.synthetic.models=[vista_r18, lraspp_mnv3]"],
    )
    models = p.studies["synthetic"].models
    rows = study.run(p, "synthetic", smoke=True)

    assert [r["model"] for r in rows] == list(models) and {r["seed"] for r in rows} == {0}
    for r in rows:
        assert r["train_s"] >= study.SMOKE["train.time_budget_s"]  # trained until the budget was spent
        assert 1 <= r["epochs"] <= study.SMOKE["train.epochs"]
        assert 0 <= r["val/seg/miou"] <= 1
    peer = next(r for r in rows if r["model"] == "lraspp_mnv3")
    assert math.isnan(peer["val/depth/abs_rel"])  # segmentation only: no depth to report
    out = tmp_path / "runs" / "synthetic" / "results"
    with open(out / "runs.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == list(models)
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in models) and "| – |" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # per-class IoU of the final evaluation, models side by side (the synthetic dataset's class names)
    with open(out / "per_class.csv") as f:
        per = list(csv.DictReader(f))
    assert {r["model"] for r in per} == set(models)
    assert {r["class"] for r in per} <= {"floor", "ceiling", "wall", "sphere", "box", "cylinder"}
    for r in per:
        row = next(q for q in rows if q["model"] == r["model"])
        assert float(r["iou_mean"]) == pytest.approx(row["per_class"][r["class"]])
        assert 0 <= float(r["iou_mean"]) <= 1 and r["runs"] == "1"
    assert f"| class | {' | '.join(models)} |" in table

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("study-synthetic")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["model"] for r in runs) == sorted(models)
    assert {r.data.tags["vista.study"] for r in runs} == {"synthetic"}

    # a second call trains nothing again: every run finished
    again = study.run(p, "synthetic", smoke=True)
    assert [r["run_name"] for r in again] == [r["run_name"] for r in rows]
    assert len(client.search_runs([exp.experiment_id])) == len(models)


def test_unknown_study_and_metric_fail_before_training() -> None:
    from pipelines import study

    p = load_params(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match="study 'nope'"):
        study.run(p, "nope")
    with pytest.raises(ParamsError, match=r"seeds \[7\] not among its seeds \[0, 1, 2\]"):
        study.run(p, "synthetic", seeds=[0, 7])
    with pytest.raises(ParamsError, match="split/task/metric"):
        load_params(ROOT / "params.yaml", ["studies.synthetic.metrics=[miou]"])
    bad = load_params(ROOT / "params.yaml", ["studies.synthetic.metrics=[val/normal/mean]"])
    with pytest.raises(ParamsError, match="lraspp_mnv3 has none of the metrics"):
        study.run(bad, "synthetic", smoke=True)


def test_the_recipe_study_trains_the_camvid_recipe_unchanged() -> None:
    """``camvid_recipe``: every run is the camvid profile as ``vista run --profile camvid`` trains it (the
    2000-s budget, its model settings), only the model and seed differ; the three models of the headline."""
    from pipelines import study

    p = load_params(ROOT / "params.yaml")
    recipe = load_params(ROOT / "params.yaml", profile="camvid")
    spec = study.study_of(p, "camvid_recipe")
    assert spec.models == ("vista_r18", "baseline_r18", "cbam_r18") and spec.seeds == (0, 1)
    for model in spec.models:
        run = study.run_settings(p.model_dump(mode="json"), spec, "camvid_recipe", model, 1)
        assert run.model.name == model and run.train.seed == 1
        assert run.train.time_budget_s == recipe.train.time_budget_s == 2000
        assert run.data == recipe.data and run.loader == recipe.loader
        same = ("grid", "width", "decoder_channels", "output_stride", "input_scale", "num_classes", "tasks")
        assert all(getattr(run.model, k) == getattr(recipe.model, k) for k in same)
        skip = {"seed", "storage_path", "models_dir", "run_name"}
        assert {k: v for k, v in run.train if k not in skip} == {k: v for k, v in recipe.train if k not in skip}
