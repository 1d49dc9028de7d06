"""A Ray cluster as an operator starts one, all on 127.0.0.1: `ray start --head` plus a second node
(`ray start --address`), each with one CPU and a custom resource; checkpoints on S3-compatible object
storage (moto's standalone server), shards read over HTTP from a separate server process, tracking in a
real `mlflow server` (sqlite backend, proxied artifacts). Jobs go in through `ray job submit`.

Marked `cluster` (`pytest -m "not cluster"` keeps them out of a quick local loop); CI runs them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.ports import free_port
from tests.helpers import ROOT, smoke_params

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
EXCLUDES = [".git", ".venv", "data", "runs", "models", "eval", "mlartifacts", "mlflow.db", ".dvc/cache", "shared"]
EXCLUDES += ["tune", "*.egg-info"]
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "vista"


def wait_for(what: str, ready, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:  # noqa: ANN001
    """Poll ``ready()`` until it is true (a start-up wait, not a timing assertion)."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if ready():
                return
        except Exception as err:  # not up yet (connection refused, the state API not serving yet, ...)
            last = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not there after {timeout:g} s (last error: {last!r})")
        time.sleep(1)


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status == 200


@dataclass
class Cluster:
    tmp: Path
    env: dict[str, str]
    dashboard: str = ""
    gcs: str = ""
    s3: str = ""
    mlflow: str = ""
    shards: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, cmd: list, log: str | None = None) -> subprocess.Popen:  # noqa: ANN001
        out = open(self.tmp / f"{log or name}.log", "ab")  # noqa: SIM115 (kept open for the process's life)
        proc = subprocess.Popen(
            [str(c) for c in cmd], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every process group at once, SIGKILL what is left after 5 s (a `ray start --block` node
        can take 30 s to give up on its peers; its workers share its fate)."""
        procs, self.procs = list(self.procs.values()), {}
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def start_second_node(self) -> None:
        self.start(
            "node2",
            [BIN / "ray", "start", "--block", f"--address={self.gcs}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", '--resources={"second_node": 1}', f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir=/tmp/vd{os.getpid()}",  # its own, as on another machine: runtime envs are cached there
             "--disable-usage-stats"],
        )  # fmt: skip
        wait_for("the second Ray node", lambda: len(self.nodes()) == 2, proc=self.procs["node2"])

    def nodes(self) -> dict[str, dict]:
        """Alive nodes: ``{node id: resources}`` (Ray's state API, served by the head's dashboard)."""
        from ray.util.state import list_nodes

        alive = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        return {n.node_id: n.resources_total for n in alive}

    def s3_client(self):  # noqa: ANN201
        import boto3

        return boto3.client("s3", endpoint_url=self.s3, **{k.lower(): v for k, v in S3_KEYS.items() if "KEY" in k},
                            region_name=S3_KEYS["AWS_DEFAULT_REGION"])  # fmt: skip

    def storage(self, prefix: str) -> str:
        """An ``s3://`` storage path with the endpoint the way pyarrow (and so Ray) takes it."""
        host = self.s3.removeprefix("http://")
        return f"s3://{BUCKET}/{prefix}?endpoint_override={host}&scheme=http"

    def submit(self, args: list[str], wait: bool = True) -> subprocess.CompletedProcess:
        runtime_env = {"excludes": EXCLUDES, "env_vars": {"MLFLOW_TRACKING_URI": self.mlflow, **S3_KEYS}}
        cmd = [BIN / "ray", "job", "submit", f"--address={self.dashboard}", "--working-dir", ROOT,
               "--runtime-env-json", json.dumps(runtime_env), *([] if wait else ["--no-wait"]), "--", *args]  # fmt: skip
        return subprocess.run([str(c) for c in cmd], env=self.env, capture_output=True, text=True, timeout=800)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from pipelines import prepare, shard

    tmp = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **S3_KEYS}
    # the head's GCS probes each raylet every second and calls it dead after 3 failed probes (Ray's default:
    # every 3 s, 5 failures): a killed node's refused connection is seen in ~3 s instead of ~15 s; a busy
    # raylet still has the default 10 s per probe to answer
    env.update({"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"})
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    c = Cluster(tmp, env)
    try:
        # the data: smoke shards, served over HTTP by their own process
        sets = [f"data.prepared_dir={tmp / 'prepared'}", f"data.shards_dir={tmp / 'shards'}"]
        p = smoke_params(None, *sets)
        prepare.run(p)
        shard.run(p)
        port = free_port()
        c.start("shards", [sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1", "--directory",
                           tmp / "shards"])  # fmt: skip
        c.shards = f"http://127.0.0.1:{port}"
        # object storage
        port = free_port()
        c.start("s3", [BIN / "moto_server", "-H", "127.0.0.1", "-p", port])
        c.s3 = f"http://127.0.0.1:{port}"
        # the tracking server
        port = free_port()
        c.start("mlflow", [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", port, "--workers", "1",
                           "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                           "--artifacts-destination", tmp / "mlartifacts"])  # fmt: skip
        c.mlflow = f"http://127.0.0.1:{port}"
        # the Ray head, then a second node
        gcs, dash = free_port(), free_port()
        c.start(
            "head",
            [BIN / "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=1",
             '--resources={"head_node": 1}', f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir=/tmp/vc{os.getpid()}", "--disable-usage-stats"],
        )  # fmt: skip
        c.gcs, c.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        wait_for("the S3 server", lambda: answers(f"{c.s3}/moto-api/"), proc=c.procs["s3"])
        c.s3_client().create_bucket(Bucket=BUCKET)
        wait_for("the shard server", lambda: answers(f"{c.shards}/synthetic/shards.json"), proc=c.procs["shards"])
        wait_for("the Ray head", lambda: len(c.nodes()) == 1, proc=c.procs["head"])
        c.start_second_node()
        wait_for("the MLflow server", lambda: answers(f"{c.mlflow}/health"), proc=c.procs["mlflow"])
        yield c
    finally:
        c.stop_all()


def job_args(c: Cluster, command: str, run: str, *extra: str) -> list[str]:
    sets = [
        f"data.shards_dir={c.shards}",
        f"train.storage_path={c.storage(run)}",
        f"train.models_dir={c.tmp / run / 'models'}",
        *extra,
    ]
    return ["vista", command, "--profile", "smoke", *(a for s in sets for a in ("--set", s))]


def submit_until_accepted(c: Cluster, args: list[str], wait: bool = True) -> subprocess.CompletedProcess:
    """The head's job agent takes a few seconds after start-up before it accepts jobs."""
    deadline = time.monotonic() + 120
    while True:
        job = c.submit(args, wait)
        busy = "No available agent" in job.stderr or "Failed to connect" in job.stderr
        if job.returncode == 0 or not busy or time.monotonic() > deadline:
            return job
        time.sleep(3)


def mlflow_run(c: Cluster, name: str):  # noqa: ANN201
    from mlflow import MlflowClient

    client = MlflowClient(c.mlflow)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_two_node_job_trains_on_both_nodes_with_s3_checkpoints_and_registers(cluster: Cluster) -> None:
    """`ray job submit -- vista run`: the two training workers run on different nodes (the run's node ids),
    checkpoints are objects in the S3 bucket, the run and the registered model are in the MLflow server."""
    c = cluster
    tic = time.monotonic()
    job = submit_until_accepted(c, job_args(c, "run", "two_nodes", "train.run_name=two_nodes"))
    wall = time.monotonic() - tic
    out = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in out, out[-4000:]
    # the job's console: one line per epoch, not Ray's report of every rank
    assert "epoch 0/1  at init" in out and "epoch 1/1  loss" in out and "Reporting training result" not in out

    client, run = mlflow_run(c, "two_nodes")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/seg/miou")] == [0, 1]
    nodes = json.loads(run.data.tags["vista.worker_nodes"])
    assert len(nodes) == 2 and set(nodes) == set(c.nodes()), (nodes, c.nodes())  # rank 0 and 1: both nodes
    card = json.loads((c.tmp / "two_nodes" / "models" / "model_card.json").read_text())
    assert card["ray"]["worker_nodes"] == nodes

    keys = [o["Key"] for o in c.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="two_nodes/")["Contents"]]
    assert any(k.endswith("/model.pt") and "/checkpoint_" in k for k in keys), keys

    registered = client.get_model_version_by_alias("vista", "champion")
    assert registered.run_id == run.info.run_id
    print(f"\ntwo-node job: {wall:.0f} s wall; worker nodes {nodes}; S3 objects {len(keys)}: {keys}")


def test_killing_the_second_node_mid_run_recovers(cluster: Cluster) -> None:
    """SIGKILL the second node (its raylet and the worker on it) after the first checkpoint; an operator
    (or an autoscaler) brings a node back; the run resumes from its last checkpoint on S3 and finishes
    with one continuous history."""
    c = cluster
    args = job_args(c, "train", "node_kill", "train.run_name=node_kill", "train.epochs=3", "train.max_failures=2")
    job = submit_until_accepted(c, args, wait=False)
    assert job.returncode == 0, job.stdout + job.stderr
    job_id = next(w for w in (job.stdout + job.stderr).split() if w.strip("'").startswith("raysubmit_")).strip("'")

    from mlflow import MlflowClient

    client = MlflowClient(c.mlflow)

    def trained_epochs() -> list[int]:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "attributes.run_name = 'node_kill'"
        )
        return [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] if runs else []

    wait_for("the first trained epoch", lambda: len(trained_epochs()) >= 1, timeout=400)
    before = c.nodes()
    c.stop("node2", signal.SIGKILL)  # the node's `ray start` and everything under it: raylet, worker
    wait_for("Ray to see the node dead", lambda: len(c.nodes()) == 1, timeout=120)
    c.start_second_node()

    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(c.dashboard)
    wait_for("the job to end", lambda: jobs.get_job_status(job_id).is_terminal(), timeout=600)
    logs = jobs.get_job_logs(job_id)
    assert jobs.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-4000:]
    card = json.loads((c.tmp / "node_kill" / "models" / "model_card.json").read_text())
    assert [h["epoch"] for h in card["history"]] == [0, 1, 2, 3]  # one continuous history
    assert sorted(set(trained_epochs())) == [1, 2, 3]  # an epoch cut by the kill may be logged twice
    assert set(card["ray"]["worker_nodes"]) == set(c.nodes()) and set(c.nodes()) != set(before)
    print(f"\nnode kill: nodes before {sorted(before)}, after {sorted(c.nodes())}; history epochs "
          f"{[h['epoch'] for h in card['history']]}")  # fmt: skip


def test_sweep_on_the_cluster_runs_a_trial_per_node_nested_in_mlflow(cluster: Cluster) -> None:
    """`ray job submit -- vista tune`: 2 concurrent trials of one worker each; with one CPU per node they
    run one per node (each child run's worker node); both nest under the sweep's parent run."""
    c = cluster
    args = job_args(
        c, "tune", "sweep",
        "tune.search_space={train.lr: {grid: [1.0e-3, 2.0e-3]}}", "tune.num_samples=1",
        "tune.max_concurrent_trials=2", "tune.workers=1", "tune.scheduler.type=fifo", "tune.scheduler.max_epochs=1",
        "tune.name=cluster_sweep", f"tune.storage_path={c.storage('tune')}", "tracking.log_images=0",
    )  # fmt: skip
    tic = time.monotonic()
    job = submit_until_accepted(c, args)
    wall = time.monotonic() - tic
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]

    from mlflow import MlflowClient

    client = MlflowClient(c.mlflow)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.sweep = 'cluster_sweep'")
    (parent,) = [r for r in runs if r.data.tags.get("vista.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    nodes = [json.loads(r.data.tags["vista.worker_nodes"]) for r in children]
    assert sorted(len(n) for n in nodes) == [1, 1] and {n[0] for n in nodes} == set(c.nodes()), nodes
    keys = [o["Key"] for o in c.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="tune/cluster_sweep/")["Contents"]]
    assert any("/_train/" in k and k.endswith("/model.pt") for k in keys), keys
    print(f"\ncluster sweep: {wall:.0f} s wall; trial nodes {nodes}")


def test_dvc_push_and_pull_through_the_s3_remote(cluster: Cluster, tmp_path: Path) -> None:
    """A DVC remote in the S3 bucket (`endpointurl` = the S3 server): `dvc push` stores the tracked shards as
    objects under the remote's prefix, and `dvc pull` brings them back byte-identical once the files and the
    cache are deleted."""
    import hashlib
    import shutil

    c = cluster
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**c.env, "DVC_NO_ANALYTICS": "1"}  # with the S3 keys of the fixture

    def sh(*cmd: str) -> str:
        proc = subprocess.run([str(a) for a in cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    dvc, git = BIN / "dvc", ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    shutil.copytree(c.tmp / "shards" / "synthetic", repo / "shards")
    (repo / "notes.txt").write_text("tracked by DVC\n")
    files = sorted(f for f in [*repo.joinpath("shards").rglob("*"), repo / "notes.txt"] if f.is_file())

    def digests() -> dict[str, str]:
        return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    before = digests()
    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh(dvc, "config", "core.site_cache_dir", tmp_path / "dvc-site")
    sh(dvc, "add", "shards", "notes.txt")
    sh(dvc, "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc-remote")
    sh(dvc, "remote", "modify", "s3", "endpointurl", c.s3)
    sh(*git, "add", "-A")
    sh(*git, "commit", "-qm", "data")
    pushed = sh(dvc, "push")

    keys = [o["Key"] for o in c.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="dvc-remote/")["Contents"]]
    assert len(keys) == len(files) + 1 and all(k.startswith("dvc-remote/files/md5/") for k in keys), keys
    assert sum(k.endswith(".dir") for k in keys) == 1  # the shards folder's listing, beside one object per file
    for f in files:
        f.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    pulled = sh(dvc, "pull")
    assert digests() == before, pulled
    assert "in sync" in sh(dvc, "status", "--cloud")
    print(f"\nDVC on S3: {len(files)} files, {len(keys)} objects: {keys}; push: {pushed.strip().splitlines()[-1]}; "
          f"pull: {pulled.strip().splitlines()[-1]}")  # fmt: skip
