"""A free TCP port of 127.0.0.1 for a server that vista starts (the local Ray dashboard) or a test starts.

Standard library only: ``tests/conftest.py`` imports it on machines that have torch and timm alone."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOW = 20000  # Ray's worker ports are 10002-19999 (ray start --min/max-worker-port)


def free_port() -> int:
    """A port of 127.0.0.1 that is free now, drawn at random from 20000 up to the kernel's ephemeral range
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
