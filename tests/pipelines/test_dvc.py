"""DVC over the pipeline: `dvc repro` re-runs only what changed; queued and --temp experiments keep their
MLflow and Ray runs in the project and show in `dvc exp show`; outputs round-trip through a remote;
`dvc plots`; each stage's code deps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(600)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def project(path: Path, params: dict, **env_vars: str) -> dict[str, str]:
    """A git + DVC repo at ``path`` with the project's code, dvc.yaml, .gitignore and ``params``, committed;
    returns the environment to run DVC in (``vista`` on PATH, running the code under test)."""
    shutil.copytree(ROOT / "vista", path / "vista", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "pipelines", path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", path)
    shutil.copy(ROOT / ".gitignore", path)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env["PYTHONPATH"] = str(ROOT)  # the code under test, whichever checkout the venv has installed
    for name in ("VISTA_PROFILE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DVC_ROOT"):
        env.pop(name, None)
    env.update(env_vars)
    run(["git", "init", "-q"], path, env)
    run([f"{BIN}/dvc", "init", "-q"], path, env)
    run([f"{BIN}/dvc", "config", "core.site_cache_dir", str(path.parent / f"{path.name}-dvc-site")], path, env)
    run([*GIT, "add", "-A"], path, env)
    run([*GIT, "commit", "-qm", "init"], path, env)
    return env


def test_dvc_repro_reruns_only_what_changed(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update({"image_size": [24, 32], "num_train": 6, "num_val": 3})
    params["shard"]["max_samples"] = 4
    params["shard"]["min_shards"] = 1
    repo = tmp_path / "repo"
    repo.mkdir()
    env = project(repo, params)

    first = run([f"{BIN}/dvc", "repro", "shard"], repo, env)
    assert "Running stage 'prepare'" in first and "Running stage 'shard'" in first
    tar = repo / "data" / "shards" / "synthetic" / "train-000000.tar"
    before = tar.read_bytes()

    again = run([f"{BIN}/dvc", "repro", "shard"], repo, env)
    assert "Running stage" not in again

    params["shard"]["max_samples"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = run([f"{BIN}/dvc", "repro", "shard"], repo, env)
    assert "Running stage 'shard'" in third and "Running stage 'prepare'" not in third
    assert tar.read_bytes() != before  # 2 samples per shard now


def smoke_params(**changes: object) -> dict:
    """params.yaml with the smoke profile and ``changes`` (dotted keys) written in: a run of seconds."""
    import copy

    from vista.config import apply_override

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in {**params["profiles"]["smoke"], **changes}.items():
        apply_override(params, key, copy.deepcopy(value))
    return params


def file_digests(root: Path, *outs: str) -> dict[str, str]:
    import hashlib

    files = [f for out in outs for f in sorted((root / out).rglob("*") if (root / out).is_dir() else [root / out])]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def test_experiments_keep_their_runs_in_the_project_and_outputs_round_trip_a_remote(tmp_path: Path) -> None:
    """`dvc exp run --temp` trains in a temporary copy of the project: its MLflow run lands in the project's
    mlflow.db and its Ray run under the project's runs/ray (both anchored at $DVC_ROOT). A queued experiment
    (`--queue`, run with `--run-all`) that changes only the depth range evaluated takes the trained model
    from DVC's run cache and re-runs evaluate; `dvc exp show` lists both with their params and eval
    metrics. Then the outputs go to a local remote (`dvc push`) and come back byte-identical (`dvc pull`)
    after the outputs and the cache are deleted."""
    import json
    import time

    from mlflow import MlflowClient

    repo = tmp_path / "repo"
    repo.mkdir()
    params = smoke_params(
        **{"train.workers": 1, "shard.min_shards": 1, "tracking.log_images": 0, "tracking.system_metrics_s": 0}
    )
    env = project(repo, params, RAY_AUTH_MODE="disabled", RAY_TMPDIR=f"/tmp/vx{os.getpid()}")
    dvc = [f"{BIN}/dvc"]

    tic = time.monotonic()
    run([*dvc, "exp", "run", "--temp", "-n", "lr-temp", "-S", "train.lr=0.001", "evaluate"], repo, env)
    temp_s = time.monotonic() - tic
    sets = ["-S", "train.lr=0.001", "-S", "eval.depth_range=[0.001,4.0]"]
    run([*dvc, "exp", "run", "--queue", "-n", "range-queued", *sets, "evaluate"], repo, env)
    tic = time.monotonic()
    run([*dvc, "exp", "run", "--run-all"], repo, env)  # starts a queue worker and follows it to the end
    queue_s = time.monotonic() - tic

    shown = json.loads(run([*dvc, "exp", "show", "--json"], repo, env))
    exps = {r["name"]: r["data"] for e in shown[1]["experiments"] or [] for r in e["revs"]}
    assert set(exps) == {"lr-temp", "range-queued"}, exps.keys()
    for name, depth_range in (("lr-temp", None), ("range-queued", [0.001, 4.0])):
        settings = exps[name]["params"]["params.yaml"]["data"]
        assert settings["train"]["lr"] == 0.001 and settings["eval"]["depth_range"] == depth_range, settings
        val = exps[name]["metrics"]["eval/metrics.json"]["data"]["val"]
        assert {"depth", "seg", "normal"} <= set(val) and 0 <= val["seg"]["miou"] <= 1, val
    temp, queued = (exps[n]["metrics"]["eval/metrics.json"]["data"]["val"] for n in ("lr-temp", "range-queued"))
    assert temp["seg"] == queued["seg"] and temp["depth"] != queued["depth"]  # one model, two depth ranges

    # one training run, in the project's MLflow db, tagged with its experiment; its Ray run in runs/ray
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    (trained,) = client.search_runs([client.get_experiment_by_name("vista/synthetic").experiment_id])
    assert trained.info.status == "FINISHED" and trained.data.tags.get("dvc_experiment") == "lr-temp"
    assert float(trained.data.params["train.lr"]) == 0.001
    ray_run = repo / "runs" / "ray" / trained.data.tags["vista.run_name"]
    assert any(ray_run.glob("checkpoint_*")), sorted(repo.rglob("*"))[:50]

    # push the outputs of one experiment, delete them and the cache, pull them back
    run([*dvc, "exp", "apply", "lr-temp"], repo, env)
    card = json.loads((repo / "models" / "model_card.json").read_text())
    assert card["checkpoint"].startswith(str(repo / "runs" / "ray")), card["checkpoint"]
    cached = ["data/prepared/synthetic", "data/shards/synthetic", "models"]  # models/ is not in git
    before = file_digests(repo, *cached)
    assert {"models/best.pt", "models/model_card.json", "data/shards/synthetic/shards.json"} <= set(before), before
    remote = tmp_path / "remote"
    run([*dvc, "remote", "add", "-d", "local", str(remote)], repo, env)
    pushed = run([*dvc, "push"], repo, env)
    stored = [f for f in remote.rglob("*") if f.is_file()]
    assert len(stored) >= len(before), (pushed, stored)
    for out in cached:
        shutil.rmtree(repo / out) if (repo / out).is_dir() else (repo / out).unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    pulled = run([*dvc, "pull"], repo, env)
    assert file_digests(repo, *cached) == before, pulled
    assert "up to date" in run([*dvc, "status", "evaluate"], repo, env)  # nothing to re-run after a pull
    print(
        f"\n--temp {temp_s:.0f} s, --queue (--run-all) {queue_s:.0f} s; {len(before)} output files, "
        f"{len(stored)} remote objects; push: {pushed.strip().splitlines()[-1]}; pull: {pulled.strip().splitlines()[-1]}"
    )
    keep = r"Experiment|train\.lr$|eval\.depth_range|val\.seg\.miou|val\.depth\.abs_rel|val\.normal\.mean"
    print(run([*dvc, "exp", "show", "--no-pager", "--md", "--drop", ".*", "--keep", keep], repo, env))


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
