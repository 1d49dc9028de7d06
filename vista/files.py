"""Writing files so that a reader never sees half of one: everything is written to a temporary file
beside the target, flushed to disk, and renamed over it (``os.replace``: atomic on one filesystem). A
failed write leaves the old file as it was and no temporary file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder created) to write to; it replaces ``path`` when the
    block ends without an error, and is removed in any case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash leaves the old file or the new one
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """``data`` into ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """``obj`` as indented JSON with sorted keys and a final newline, atomically."""
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
