"""The `vista` CLI: train with the smoke profile, clear errors for bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.helpers import ROOT, smoke_params
from tests.helpers.ui import VistaUI

runner = CliRunner()


def test_train_without_shards_says_what_to_run(tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke", "--set", f"data.shards_dir={tmp_path}"],
    )
    assert r.exit_code == 1
    assert "no shards" in "".join(r.output.split("\n")) and "vista shard" in "".join(r.output.split("\n"))


def test_bad_override_exits_2_naming_the_key() -> None:
    r = runner.invoke(app, ["train", "--params", str(ROOT / "params.yaml"), "--set", "train.epochs=-1"])
    assert r.exit_code == 2
    assert "train.epochs=-1" in r.output


def test_models_lists_the_registry() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "vista_official_r101" in r.output


def test_best_metric_of_a_missing_task_is_refused_before_training(tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke", "--set", "model.tasks=[depth]"],
    )
    assert r.exit_code == 1
    assert "train.best_metric='val/seg/miou'" in "".join(r.output.split("\n"))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.name=nope", "model 'nope': choose one of"),
        ("train.best_metric=val/seg/mIoU", "train.best_metric='val/seg/mIoU' is not a metric this model reports"),
        ("eval.split=nope", "eval.split='nope' is not one of data.splits"),
        ("model.attention.kernel_size=4", "must be a positive odd number"),
    ],
)
def test_settings_that_cannot_train_fail_before_ray_or_mlflow(tmp_path: Path, override: str, match: str) -> None:
    """Checked before anything starts: the smoke profile's shards do not exist here, and that is not what
    the error says; no MLflow database was created."""
    r = runner.invoke(
        app,
        ["train", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"]
        + ["--set", f"data.shards_dir={tmp_path}", "--set", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
        + ["--set", override],
    )
    out = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert match in out and "Traceback" not in out and "no shards" not in out
    assert not (tmp_path / "m.db").exists()


def test_a_failed_training_is_one_line_per_worker_and_a_failed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train's failure (a `WorkerGroupError` with each rank's exception) becomes one `error:` line naming
    what each worker raised, and the MLflow run is FAILED with that reason (was: Ray's traceback panel)."""
    from ray.train import WorkerGroupError

    from pipelines import prepare, shard, train
    from vista.data.webdata import ShardReadError

    base = ["--params", str(ROOT / "params.yaml"), "--profile", "smoke"]
    sets = [f"data.prepared_dir={tmp_path / 'p'}", f"data.shards_dir={tmp_path / 's'}"]
    sets += [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"train.models_dir={tmp_path / 'models'}"]
    p = smoke_params(None, *sets)
    prepare.run(p)
    shard.run(p)
    failures = {
        1: ShardReadError("s/train-000000.tar: sample 'a' cannot be decoded"),
        0: FloatingPointError("loss is nan"),
    }

    def failing_fit(*_a: object, **_k: object) -> None:
        raise WorkerGroupError("Ray's long text with tracebacks", failures)

    monkeypatch.setattr(train, "fit", failing_fit)
    r = runner.invoke(app, ["train", *base, *(x for s in sets for x in ("--set", s))])
    reason = (
        "training failed: rank 0: FloatingPointError: loss is nan; "
        "rank 1: ShardReadError: s/train-000000.tar: sample 'a' cannot be decoded"
    )
    assert r.exit_code == 1 and reason in " ".join(r.output.split()) and "Traceback" not in r.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(p.experiment_name()).experiment_id])
    assert run.info.status == "FAILED" and reason in run.data.tags["vista.failure"]


def test_ui_on_a_port_in_use_says_so_and_starts_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another server listening on the port: `vista ui` exits 2 naming the port, before any `mlflow ui` (was:
    the server failed to bind while `vista ui` asked that other server for /health, and crashed on its
    non-HTTP answer). A port the check finds free but the server then cannot bind: the exit code says it."""
    import socket

    from pipelines import cli

    started: list[list[str]] = []
    monkeypatch.setattr(cli, "serve", lambda cmd, _console: started.append(cmd) or 1)
    monkeypatch.setattr(cli, "announce", lambda *_a, **_k: None)
    args = ["ui", "--params", str(ROOT / "params.yaml")]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = runner.invoke(app, [*args, "--port", str(port)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and f"port {port} of 127.0.0.1 is in use" in out and "--port" in out, r.output
    assert not started
    r = runner.invoke(app, [*args, "--port", str(port)])  # free now; the (stubbed) server exits 1
    assert r.exit_code == 1 and "the MLflow server exited with code 1" in " ".join(r.output.split()), r.output
    assert len(started) == 1 and started[0][started[0].index("--port") + 1] == str(port)


@pytest.mark.timeout(300)
def test_ui_stops_its_server_and_its_workers(tmp_path: Path) -> None:
    """`vista ui` stopped with SIGTERM ends the `mlflow ui` server and every process it started (was: the
    server kept running and holding the port). Ctrl-C (SIGINT) is checked the same way at the end of
    tests/pipelines/test_ui_browser.py. Over a backend without these settings' experiment yet, `vista ui` links the
    experiments list."""
    ui = VistaUI(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        line = ui.wait_for_line("no experiment vista/synthetic yet; experiments: ")  # printed once the server answers
        assert line.endswith(f"{ui.base}/#/experiments?workflowType=machine_learning")
        ui.stop("SIGTERM")
    finally:
        ui.close()


def test_verbose_reaches_the_training_stage_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--verbose` (Ray's own logs) goes to the train stage of `vista train` and `vista run`; quiet by default."""
    from pipelines import evaluate, register, train

    calls: list[tuple[str, dict]] = []
    for stage in (train, evaluate, register):
        monkeypatch.setattr(stage, "run", lambda p, console, _n=stage.__name__, **kw: calls.append((_n, kw)))
    base = ["--params", str(ROOT / "params.yaml"), "--profile", "smoke"]
    assert runner.invoke(app, ["train", *base]).exit_code == 0
    assert runner.invoke(app, ["train", *base, "--verbose"]).exit_code == 0
    assert runner.invoke(app, ["run", *base, "-v"]).exit_code == 0
    assert calls == [
        ("pipelines.train", {"verbose": False}),
        ("pipelines.train", {"verbose": True}),
        ("pipelines.train", {"verbose": True}),
        ("pipelines.evaluate", {}),
        ("pipelines.register", {}),
    ]


def test_environment_and_file_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error classes that used to print tracebacks (issue: IsADirectoryError, UnicodeDecodeError,
    MlflowException, tarfile.ReadError, OSError) are one `error:` line naming the thing, exit 1 or 2."""
    import tarfile

    from pipelines import evaluate

    def one_line(args: list[str], named: str, code: int) -> None:
        r = runner.invoke(app, args)
        out = " ".join(r.output.split())
        assert r.exit_code == code and isinstance(r.exception, SystemExit), (r.exception, r.output)
        # (MLflow's INFO lines may precede; rich wraps a long path anywhere, so compared without whitespace)
        assert out.count("error:") == 1 and "".join(named.split()) in "".join(out.split("error:", 1)[1].split()), out

    one_line(["train", "--params", str(tmp_path)], str(tmp_path), 2)  # a folder as the params file
    (tmp_path / "latin1.yaml").write_bytes(b"train:\n  epochs: 2 # \xe9t\xe9\n")
    one_line(["train", "--params", str(tmp_path / "latin1.yaml")], "latin1.yaml", 2)  # not UTF-8
    # a registry URI that names no model (MlflowException)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    one_line(["predict", str(tmp_path / "x.png"), "--model", "models:/nope@champion"], "nope", 1)

    def raising(err: BaseException):  # noqa: ANN202
        def run(*_a: object, **_k: object) -> None:
            raise err

        return run

    base = ["evaluate", "--params", str(ROOT / "params.yaml"), "--profile", "smoke"]
    monkeypatch.setattr(evaluate, "run", raising(tarfile.ReadError("shards/val-000000.tar: truncated")))
    one_line(base, "val-000000.tar: truncated", 1)
    monkeypatch.setattr(evaluate, "run", raising(PermissionError(13, "Permission denied", "eval/metrics.json")))
    one_line(base, "eval/metrics.json", 1)
