"""The `vista` CLI: train with the smoke profile, clear errors for bad settings."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import ROOT

runner = CliRunner()


def test_train_smoke_writes_checkpoint_and_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = runner.invoke(
        app, ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke", "--set", f"train.out_dir={out}"]
    )
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").is_file()
    from PIL import Image

    with Image.open(out / "samples.png") as im:  # 4 val images x (input + 3 tasks x pred/gt) tiles of 64x64
        assert im.size == (7 * 64, 4 * 64)
    result = json.loads((out / "metrics.json").read_text())
    assert {"val/seg/miou", "val/depth/abs_rel", "val/normal/mean"} <= set(result["final"])
    assert "at init" in r.output


def test_bad_override_exits_2_naming_the_key() -> None:
    r = runner.invoke(app, ["train", "--params", str(ROOT / "params.yaml"), "--set", "train.epochs=-1"])
    assert r.exit_code == 2
    assert "train.epochs=-1" in r.output


def test_models_lists_the_registry() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "vista_official_r101" in r.output
