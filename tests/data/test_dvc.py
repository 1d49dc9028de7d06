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
