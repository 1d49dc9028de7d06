"""`vista prepare` / `vista shard` from the command line: outputs, progress, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from tests.helpers import ROOT

runner = CliRunner()


def flat(text: str) -> str:
    """Rich wraps long lines to the terminal width; compare without the breaks."""
    return "".join(text.split("\n"))


def args(tmp: Path, *extra: str) -> list[str]:
    return [
        "--params",
        str(ROOT / "params.yaml"),
        "--profile",
        "smoke",
        "--set",
        f"data.prepared_dir={tmp / 'prepared'}",
        "--set",
        f"data.shards_dir={tmp / 'shards'}",
        *extra,
    ]


def test_prepare_then_shard_synthetic(tmp_path: Path) -> None:
    r = runner.invoke(app, ["prepare", *args(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "train: 8 samples, 0 rejected" in r.output
    assert (tmp_path / "prepared" / "synthetic" / "manifest.parquet").is_file()
    r = runner.invoke(app, ["shard", *args(tmp_path, "--set", "shard.max_samples=3", "--set", "shard.min_shards=1")])
    assert r.exit_code == 0, r.output
    index = json.loads((tmp_path / "shards" / "synthetic" / "shards.json").read_text())
    assert index["splits"]["train"]["samples"] == 8 and len(index["splits"]["train"]["shards"]) == 3


def test_shard_before_prepare_says_what_to_run(tmp_path: Path) -> None:
    r = runner.invoke(app, ["shard", *args(tmp_path)])
    assert r.exit_code == 1
    assert "manifest not found" in flat(r.output) and "vista prepare" in flat(r.output)


def test_bad_camvid_label_names_the_file_or_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    for d in ("train", "trainannot", "val", "valannot"):
        (root / d).mkdir(parents=True)
    for split in ("train", "val"):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / split / "a.png")
        Image.fromarray(np.full((4, 6), 3, np.uint8)).save(root / f"{split}annot" / "a.png")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "val" / "b.png")
    Image.fromarray(np.full((4, 6), 99, np.uint8)).save(root / "valannot" / "b.png")
    base = args(tmp_path, "--set", "data.dataset=camvid", "--set", f"data.root={root}")
    r = runner.invoke(app, ["prepare", *base])
    assert r.exit_code == 1
    assert "valannot/b.png" in flat(r.output) and "[99]" in flat(r.output)
    r = runner.invoke(app, ["prepare", *base, "--set", "data.on_bad_sample=skip"])
    assert r.exit_code == 0, r.output
    assert "val: 1 samples, 1 rejected" in r.output


def test_missing_dataset_root_is_named(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["prepare", *args(tmp_path, "--set", "data.dataset=camvid", "--set", "data.root=/nope/camvid")]
    )
    assert r.exit_code == 1 and "/nope/camvid" in flat(r.output)
