"""`vista ui` as a subprocess for tests: started on a free port of 127.0.0.1 over a tracking backend, its
output collected line by line, stopped by a signal with the checks that nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pipelines.ports import free_port
from tests.helpers import ROOT

START_S = 180.0  # how long `mlflow ui` may take to answer on a loaded 2-core box before the test gives up


class VistaUI:
    """``vista ui --port P --params PARAMS`` with ``MLFLOW_TRACKING_URI=tracking_uri``."""

    def __init__(self, tracking_uri: str, params: Path = ROOT / "params.yaml") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        vista = Path(sys.executable).parent / "vista"
        self.proc = subprocess.Popen(
            [str(vista), "ui", "--port", str(self.port), "--params", str(params)],
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, start: str) -> str:
        """The first line of the output that starts with ``start`` (waits for it while `vista ui` runs)."""
        deadline = time.monotonic() + START_S
        while True:
            found = [line.strip() for line in list(self.lines) if line.startswith(start)]
            if found:
                return found[0]
            assert self.proc.poll() is None, f"vista ui exited early: {self.output}"
            assert time.monotonic() < deadline, f"vista ui never printed {start!r}: {self.output}"
            time.sleep(0.2)

    def stop(self, signame: str) -> None:
        """Send ``signame``; `vista ui` must exit 0 saying so, and take its server and every process that
        server started with it (the port no longer answers)."""
        import psutil
        import pytest

        server = psutil.Process(self.proc.pid).children(recursive=True)
        assert server, "no server process under vista ui"
        self.proc.send_signal(getattr(signal, signame))
        assert self.proc.wait(timeout=60) == 0, self.output
        self._reader.join(timeout=10)
        assert "MLflow UI stopped" in self.output
        _gone, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{self.base}/health", timeout=5)

    def close(self) -> None:
        """End `vista ui` and its server if they still run (a test that failed half-way)."""
        import psutil

        if self.proc.poll() is not None:
            return
        server = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.terminate()  # vista ui stops its server's process group
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for p in psutil.wait_procs(server, timeout=15)[1]:
            p.kill()
