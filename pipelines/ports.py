"""Ports of 127.0.0.1 for the servers vista starts (`vista ui`'s MLflow server, the local Ray dashboard) and
the tests start. Standard library only: the tests import it without the pipeline stack."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOW = 20000  # Ray's worker ports are 10002-19999 (ray start --min/max-worker-port)


def free_port() -> int:
    """A port that is free now, drawn at random from 20000 up to the kernel's ephemeral range
    (``ip_local_port_range``, 32768 by default).

    A port the kernel hands out for ``bind(("", 0))`` can be taken by another process before our server binds
    it: Ray picks its servers' ports at random above such a port, and every outgoing connection gets one. Below
    the ephemeral range only a process that names the port can take it. A CI run lost `vista ui`'s port to a
    Ray server on the other pytest worker that way. ``SystemRandom``: tests seed ``random``, and two processes
    must not draw the same sequence. Up to 200 distinct ports are tried; when that range is empty or full, the
    kernel picks."""
    try:
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux
        top = 32768
    for port in random.SystemRandom().sample(range(LOW, top), k=min(200, max(top - LOW, 0))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server can listen on ``port`` now, checked the way uvicorn binds (SO_REUSEADDR: a port left
    in TIME_WAIT by a server just stopped counts as free). :func:`free_port`'s check is stricter (a port
    it draws may go to any server). Without this check a port held by another server made `mlflow ui` fail
    to bind while `vista ui` went on asking that other server for ``/health``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
