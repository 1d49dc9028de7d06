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


# modules a stage imports that cannot change its outputs (console and logging only)
NOT_OUTPUT_CODE = {
    "pipelines/__init__.py": "empty",
    "vista/__init__.py": "the version string",
    "pipelines/progress.py": "console progress bars",
    "pipelines/feed.py": "the console line per epoch",
    "vista/tracking.py": "MLflow logging (train: the card's MLflow run id differs on every run anyway)",
}


def _module_file(name: str) -> Path | None:
    p = ROOT / Path(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def imported_code(module: str) -> set[str]:
    """Files of ``vista``/``pipelines`` that ``module`` imports, transitively, function-level imports
    included (read from the source, not from ``sys.modules``)."""
    import ast

    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        f = _module_file(name)
        if f is None or f in seen:
            continue
        seen.add(f)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        package = parts if f.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                mod = ".".join([*base, *([node.module] if node.module else [])])
                todo += [mod, *(f"{mod}.{a.name}" for a in node.names)]
    return {str(p.relative_to(ROOT)) for p in seen}


@pytest.mark.parametrize("stage", ["prepare", "shard", "train", "evaluate", "register"])
def test_stage_deps_cover_the_code_it_runs(stage: str) -> None:
    """Every module a stage's entry point imports (function-level imports too) is one of its DVC deps or
    inside a dep folder, so a code change re-runs the stages it can change; console/logging modules excepted."""
    deps = [d for d in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"] if "$" not in d]
    missing = sorted(
        f
        for f in imported_code(f"pipelines.{stage}")
        if f not in NOT_OUTPUT_CODE and not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    )
    assert not missing, f"dvc.yaml stage {stage!r} misses deps {missing}"
    absent = [d for d in deps if not (ROOT / d).exists()]
    assert not absent, f"dvc.yaml stage {stage!r} names deps that do not exist: {absent}"
