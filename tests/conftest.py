"""Shared fixtures. Only torch (+ timm via vista.models) is needed for the model tests, so they also run
on a GPU machine that lacks the pipeline stack."""

from __future__ import annotations

import os

# never download anything in tests: pretrained weights are a user feature, tested offline
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist (the README's test command runs 2 workers) each worker gets its share of the cores:
# two processes each running torch on every core slow each other down many times over
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

ROOT = Path(__file__).resolve().parents[1]
# the project's shared data folder: ../shared beside the repo, or $VISTA_SHARED (e.g. a copy on a GPU box)
SHARED = Path(os.environ.get("VISTA_SHARED") or ROOT.parent / "shared")


# The longest test files (Ray clusters, sweeps, DVC experiments: minutes each), longest first. Collected first,
# so that pytest-xdist (`--dist loadfile --no-loadscope-reorder`, the README's test command) starts them
# first and the short files fill the gaps: handed out last, one of them ended the run on one worker while
# the other idled. The order of the tests inside a file is kept.
LONG_FILES = (
    "test_tune.py",
    "test_cluster.py",
    "data/test_dvc.py",
    "test_study.py",
    "test_train_ray.py",
    "test_engine.py",
    "test_benchmarks.py",
    "test_cli.py",
)


def _file_rank(item: pytest.Item) -> int:
    rel = item.path.relative_to(ROOT / "tests").as_posix()
    return LONG_FILES.index(rel) if rel in LONG_FILES else len(LONG_FILES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_file_rank)  # stable: files and tests otherwise in collection order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shared_path(*parts: str) -> Path:
    """A path under ../shared; fails (not skips) in CI when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"{path} is missing (the project's shared data folder beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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
