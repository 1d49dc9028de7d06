"""`vista predict` with a checkpoint: colourised outputs per task, any input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from tests.helpers import smoke_params
from vista.recipe import build_model

runner = CliRunner()


def test_predict_writes_each_task_at_input_size(tmp_path: Path) -> None:
    params = smoke_params()
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
        {"model": {}, "params": smoke_params().model_dump(mode="json")},
        tmp_path / "m.pt",
    )
    r = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "m.pt")])
    assert r.exit_code == 1 and "m.pt: weights do not fit" in "".join(r.output.split("\n"))


def _checkpoint(tmp_path: Path) -> Path:
    params = smoke_params()
    state = {"model": build_model(params).state_dict(), "params": params.model_dump(mode="json"), "epoch": 1}
    torch.save({**state, "metrics": {}}, tmp_path / "best.pt")
    return tmp_path / "best.pt"


def test_same_stems_get_distinct_outputs_and_big_images_are_bounded(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(tmp_path / "b" / "x.jpg")
    args = ["predict", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.jpg"), "--model", str(model)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--max-side", "256"])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "x_1_seg.png") as im:
        assert im.size == (40, 30)  # small: the input's size
    with Image.open(tmp_path / "out" / "x_2_seg.png") as im:
        assert im.size == (256, 192)  # big: downscaled to the long side, aspect kept
    assert "downscaled from 4000x3000" in " ".join(r.output.split())


def test_out_naming_a_file_is_a_clear_error(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "i.png")
    (tmp_path / "taken").write_text("")
    r = runner.invoke(
        app, ["predict", str(tmp_path / "i.png"), "--model", str(model), "--out", str(tmp_path / "taken")]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "taken: is a file; give a folder" in " ".join(r.output.split())


def test_sixteen_bit_and_grayscale_images_keep_their_contrast(tmp_path: Path) -> None:
    from vista.data.sources.base import read_rgb

    ramp16 = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63000
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp16 / 65535 * 255).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert rgb.min() == 0 and rgb.max() == expected.max() > 200  # not all white
    gray8 = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    assert np.array_equal(read_rgb(tmp_path / "g8.png"), np.repeat(gray8[..., None], 3, axis=2))
