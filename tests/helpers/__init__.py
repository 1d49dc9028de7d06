"""What the tests share besides fixtures: the repository's root, the shared data folder, shard surgery.
Standard library and pytest only (the model tests run on a GPU box with torch and timm alone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the project's shared data folder: ../shared beside the repo, or $VISTA_SHARED (e.g. a copy on a GPU box)
SHARED = Path(os.environ.get("VISTA_SHARED") or ROOT.parent / "shared")


def shared_path(*parts: str) -> Path:
    """A path under ../shared; fails (not skips) in CI when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"{path} is missing (the project's shared data folder beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def rewrite_member(tar: Path, suffix: str, change, nth: int = 0) -> str:  # noqa: ANN001
    """Rewrite ``tar`` with its ``nth`` member ending in ``suffix`` replaced by ``change(bytes)``; returns
    that member's sample key."""
    import io
    import tarfile

    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    hits = [m.name for m, _ in members if m.name.endswith(suffix)]
    target = hits[nth]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            if m.name == target:
                data = change(data)
                m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    return target.split(".", 1)[0]


def break_sample(shards: Path, tar_name: str, nth: int = 0) -> str:
    """Truncate the PNG of the ``nth`` sample in ``shards/tar_name`` and record the tar's new sha256 in
    ``shards.json``, so that only decoding that sample can fail; returns its key."""
    import hashlib
    import json

    tar = shards / tar_name
    key = rewrite_member(tar, ".png", lambda d: d[:40], nth)
    index = json.loads((shards / "shards.json").read_text())
    for split in index["splits"].values():
        for entry in split["shards"]:
            if entry["file"] == tar_name:
                entry["sha256"] = hashlib.sha256(tar.read_bytes()).hexdigest()
    (shards / "shards.json").write_text(json.dumps(index))
    return key


def smoke_params(tmp: Path | None = None, *overrides: str):  # noqa: ANN201  (vista.config.Params)
    """The repository's params.yaml under the ``smoke`` profile (a run of seconds). With ``tmp``, every
    folder a run writes (prepared data, shards, Ray storage, models) lies inside it; ``overrides``: more
    ``key=value`` settings, applied last."""
    from vista.config import load_params

    dirs = (
        []
        if tmp is None
        else [
            f"data.prepared_dir={tmp / 'prepared'}",
            f"data.shards_dir={tmp / 'shards'}",
            f"train.storage_path={tmp / 'ray'}",
            f"train.models_dir={tmp / 'models'}",
        ]
    )
    return load_params(ROOT / "params.yaml", [*dirs, *overrides], profile="smoke")
