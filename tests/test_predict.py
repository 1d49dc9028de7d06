"""`vista predict` with a checkpoint: colourised outputs per task, any input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import ROOT
from vista.checkpoint import build_model
from vista.config import load_params

runner = CliRunner()


def test_predict_writes_each_task_at_input_size(tmp_path: Path) -> None:
    params = load_params(ROOT / "params.yaml", profile="smoke")
    model = build_model(params)
    torch.save(
        {"model": model.state_dict(), "params": params.model_dump(mode="json"), "epoch": 1, "metrics": {}},
        tmp_path / "best.pt",
    )
    for name, size in (("a.png", (40, 56)), ("b.jpg", (33, 47))):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    r = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.jpg"),
            "--model",
            str(tmp_path / "best.pt"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert r.exit_code == 0, r.output
    for stem, size in (("a", (40, 56)), ("b", (33, 47))):
        for task in ("depth", "seg", "normal"):
            with Image.open(tmp_path / "out" / f"{stem}_{task}.png") as im:
                assert im.size == (size[1], size[0])
        assert np.load(tmp_path / "out" / f"{stem}_depth.npy").shape == size


def test_predict_errors_name_the_file(tmp_path: Path) -> None:
    r = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1 and "nope.pt" in "".join(r.output.split("\n"))
    torch.save(
        {"model": {}, "params": load_params(ROOT / "params.yaml", profile="smoke").model_dump(mode="json")},
        tmp_path / "m.pt",
    )
    r = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "m.pt")])
    assert r.exit_code == 1 and "m.pt: weights do not fit" in "".join(r.output.split("\n"))
