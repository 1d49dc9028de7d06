"""The evaluate stage measures the model as it was trained: the checkpoint's own settings, this run's
evaluation choices, and a refusal (naming the settings) for overrides that would change the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import evaluate, prepare, shard
from tests.helpers import break_sample
from vista.config import Params, with_overrides
from vista.recipe import build_model

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke) -> Params:  # noqa: ANN001
    """Smoke shards and a (randomly initialised) models/best.pt with the settings it was built from."""
    monkeypatch.chdir(tmp_path)
    params = smoke()
    prepare.run(params)
    shard.run(params)
    torch.manual_seed(0)
    models = Path(params.train.models_dir)
    models.mkdir()
    state = {"model": build_model(params).state_dict(), "params": params.model_dump(mode="json"), "epoch": 1}
    torch.save({**state, "metrics": {}}, models / "best.pt")
    return params


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"model.max_depth": 80.0}, "model.max_depth: trained with None, now 80.0"),
        ({"model.attention.rank": 1}, "model.attention.rank: trained with 3, now 1"),
        ({"model.num_classes": 5}, "model.num_classes"),
    ],
)
def test_overrides_that_change_the_network_are_refused(trained: Params, override: dict, named: str) -> None:
    with pytest.raises(ValueError, match="best.pt was trained with other settings") as err:
        evaluate.run(with_overrides(trained, override))
    assert named in str(err.value)
    assert not Path("eval/metrics.json").exists()  # nothing written for the registry gate to read


def test_evaluation_choices_apply_to_the_trained_model(trained: Params) -> None:
    base = evaluate.run(trained)
    assert json.loads(Path("eval/metrics.json").read_text())["val"]["seg"]["miou"] == base["val/seg/miou"]
    # an evaluation-time choice (input scale, the depth range) is applied, not refused
    scaled = evaluate.run(with_overrides(trained, {"model.input_scale": 0.5}))
    capped = evaluate.run(with_overrides(trained, {"eval.depth_range": [0.001, 1.0]}))
    assert scaled["val/depth/abs_rel"] != base["val/depth/abs_rel"]
    assert capped["val/depth/abs_rel"] != base["val/depth/abs_rel"]
    assert capped["val/seg/miou"] == base["val/seg/miou"]


def test_a_bad_val_sample_fails_by_name_or_is_skipped_and_counted(trained: Params) -> None:
    from vista.data.webdata import ShardReadError

    shards = Path(trained.data.shards_dir) / trained.data.dataset
    key = break_sample(shards, "val-000000.tar")
    with pytest.raises(ShardReadError, match=rf"val-000000\.tar: sample '{key}' cannot be decoded"):
        evaluate.run(trained)
    results = evaluate.run(with_overrides(trained, {"data.on_bad_sample": "skip"}))
    assert results["val/skipped_samples"] == 1.0
    assert json.loads(Path("eval/metrics.json").read_text())["val"]["skipped_samples"] == 1.0
