"""The MLflow UI behind `vista ui`: the server's supervisor (:func:`serve`: stops it and every process it
started on Ctrl-C or SIGTERM) and the link to the settings' runs table once it answers (:func:`announce`)."""

from __future__ import annotations

import contextlib

from rich.console import Console

# MLflow 3.17's UI shows every experiment in its GenAI view (traces, an overview of LLM usage) unless its
# "Model training" switch is on: remembered per browser, off at first, whatever the experiment's
# mlflow.experimentKind tag says. This URL parameter turns it on.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def experiment_page(base: str, experiment_id: str | None) -> str:
    """The MLflow UI page of an experiment's runs table, or of the experiments list (``experiment_id`` None)."""
    where = f"experiments/{experiment_id}" if experiment_id is not None else "experiments"
    return f"{base}/#/{where}?{MODEL_TRAINING_VIEW}"


def announce(base: str, experiment: str, console: Console, wait_s: float = 300.0) -> str | None:
    """Once the MLflow server at ``base`` answers ``/health``: print the link to ``experiment``'s runs table
    (the experiments list while there is no such experiment) and return it; None when the server never
    answered within ``wait_s``."""
    import http.client
    import json
    import time
    import urllib.parse
    import urllib.request

    from rich.markup import escape

    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                break
        except (OSError, http.client.HTTPException):  # not up yet, or (a lost race for the port) not HTTP
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as r:
            experiment_id = str(json.load(r)["experiment"]["experiment_id"])
    except (OSError, ValueError, KeyError):  # 404: no such experiment yet
        experiment_id = None
    url = experiment_page(base, experiment_id)
    if experiment_id is None:
        console.print(f"no experiment {escape(experiment)} yet; experiments: {url}", soft_wrap=True)
    else:
        console.print(f"runs of {escape(experiment)}: {url}", soft_wrap=True)
    return url


def serve(cmd: list[str], console: Console) -> int:
    """Run a server command until it exits or this process gets SIGINT/SIGTERM; then stop the server and
    every process it started (``mlflow ui`` runs uvicorn workers), so no server outlives the command.
    Returns the exit code (0 after a stop on request)."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, start_new_session=True)  # its own process group: one signal reaches all
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    deadline = None
    try:
        while True:
            try:
                code = proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if stopping and deadline is None:
                    deadline = time.monotonic() + 10
                if deadline is not None and time.monotonic() > deadline:  # SIGTERM ignored for 10 s
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a server that exited
            os.killpg(proc.pid, signal.SIGTERM)
    if stopping:
        console.print("MLflow UI stopped")
        return 0
    return code
