"""The cluster path: `ray start --head` on 127.0.0.1, then `ray job submit --working-dir . -- vista run ...`
trains 2 workers to completion and registers the model (the README's recipe, smoke-sized)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vista.config import load_params

pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent
EXCLUDES = [".git", ".venv", "data", "runs", "models", "eval", "mlartifacts", "mlflow.db", ".dvc/cache", "shared"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_trains_and_registers(tmp_path: Path) -> None:
    from pipelines import prepare, shard

    sets = [f"data.prepared_dir={tmp_path / 'prepared'}", f"data.shards_dir={tmp_path / 'shards'}"]
    p = load_params(ROOT / "params.yaml", sets, profile="smoke")
    prepare.run(p)
    shard.run(p)

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent = free_port(), free_port(), free_port()
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
         f"--dashboard-agent-listen-port={agent}",  # not the default 52365: another Ray may hold it
         f"--temp-dir=/tmp/vj{os.getpid()}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"MLFLOW_TRACKING_URI": uri}}
    cmd = [
        BIN / "ray", "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "vista", "run", "--profile", "smoke", *[a for s in sets for a in ("--set", s)],
        "--set", f"train.storage_path={tmp_path / 'ray'}",
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # the head takes a few seconds before its job agent accepts jobs
            job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480)
            busy = "No available agent" in job.stderr or "Failed to connect" in job.stderr
            if job.returncode == 0 or not busy or time.monotonic() > deadline:
                break
            time.sleep(3)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-3000:]
    assert "succeeded" in out
    # the job's console (its driver's output): one line per epoch, not Ray's report of every rank
    assert "epoch 0/1  at init" in out and "epoch 1/1  loss" in out
    assert "Reporting training result" not in out

    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vista").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/seg/miou")] == [0, 1]
    version = client.get_model_version_by_alias("vista", "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert any((tmp_path / "ray").glob("*/checkpoint_*"))  # checkpoints on the (shared) storage path
