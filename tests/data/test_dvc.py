"""`dvc repro` of prepare -> shard: runs both, then nothing, then only shard after a shard param change."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_dvc_repro_reruns_only_what_changed(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "vista", tmp_path / "vista", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update({"image_size": [24, 32], "num_train": 6, "num_val": 3})
    params["shard"]["max_samples"] = 4
    params["shard"]["min_shards"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env.pop("VISTA_PROFILE", None)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q"], tmp_path, env)
    run([f"{bin_dir}/dvc", "init", "-q"], tmp_path, env)
    run([f"{bin_dir}/dvc", "config", "core.site_cache_dir", str(tmp_path / ".dvc-site")], tmp_path, env)
    run([*git, "add", "-A"], tmp_path, env)
    run([*git, "commit", "-qm", "init"], tmp_path, env)

    first = run([f"{bin_dir}/dvc", "repro", "shard"], tmp_path, env)
    assert "Running stage 'prepare'" in first and "Running stage 'shard'" in first
    tar = tmp_path / "data" / "shards" / "synthetic" / "train-000000.tar"
    before = tar.read_bytes()

    again = run([f"{bin_dir}/dvc", "repro", "shard"], tmp_path, env)
    assert "Running stage" not in again

    params["shard"]["max_samples"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    third = run([f"{bin_dir}/dvc", "repro", "shard"], tmp_path, env)
    assert "Running stage 'shard'" in third and "Running stage 'prepare'" not in third
    assert tar.read_bytes() != before  # 2 samples per shard now


def test_dvc_plots_draw_every_declared_curve_and_the_confusion_counts(tmp_path: Path) -> None:
    """`dvc plots show` over what the evaluate stage writes, for a segmentation-only model: every plot of
    dvc.yaml renders (no missing column), and the confusion template sums the stored counts."""
    import json

    from pipelines.evaluate import write_history

    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    run(["git", "init", "-q"], tmp_path, env)
    run([f"{bin_dir}/dvc", "init", "-q"], tmp_path, env)
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    plots = tmp_path / "eval" / "plots"
    plots.mkdir(parents=True)
    history = [{"epoch": e, "train/elapsed_s": 10.0 * e, "val/seg/miou": 0.1 * e} for e in range(3)]
    write_history(history, plots / "history.csv")
    (plots / "confusion.csv").write_text("actual,predicted,count\n0,0,900\n0,1,100\n1,0,0\n1,1,50\n")

    out = json.loads(run([f"{bin_dir}/dvc", "plots", "show", "--json"], tmp_path, env))
    assert not out.get("errors"), out.get("errors")
    specs = {name: entries[0]["content"] for name, entries in out["data"].items()}
    assert set(specs) >= {
        "val segmentation mIoU",
        "val depth (abs_rel, d1)",
        "val normals mean angle (deg)",
        "segmentation confusion (val)",
    }
    confusion = json.dumps(specs["segmentation confusion (val)"])
    assert '"op": "sum", "field": "pixels_in_row"' in confusion and '"count": "900"' in confusion
    miou = specs["val segmentation mIoU"]["data"]["values"]
    assert [float(v["val/seg/miou"]) for v in miou] == [0.0, 0.1, 0.2]
