"""Shared fixtures. Only torch (+ timm via vista.models) is needed for the model tests, so they also run
on a GPU machine that lacks the pipeline stack."""

from __future__ import annotations

import os

# never download anything in tests: pretrained weights are a user feature, tested offline
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist (the README's test command runs 2 workers) each worker gets its share of the cores:
# two processes each running torch on every core slow each other down many times over
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

from tests.helpers import ROOT, smoke_params  # noqa: E402

# The longest test files (Ray clusters, sweeps, DVC experiments: minutes each), longest first. Collected first,
# so that pytest-xdist (`--dist loadfile --no-loadscope-reorder`, the README's test command) starts them
# first and the short files fill the gaps: handed out last, one of them ended the run on one worker while
# the other idled. The order of the tests inside a file is kept.
LONG_FILES = (
    "pipelines/test_tune.py",
    "pipelines/test_cluster.py",
    "pipelines/test_dvc.py",
    "pipelines/test_study.py",
    "pipelines/test_train_ray.py",
    "vista/test_engine.py",
    "benchmarks/test_benchmarks.py",
    "pipelines/test_cli.py",
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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def smoke(tmp_path):  # noqa: ANN001, ANN201
    """``smoke(*overrides)``: the smoke-profile settings with every folder a run writes in this test's
    ``tmp_path`` (:func:`tests.helpers.smoke_params`)."""
    return lambda *overrides: smoke_params(tmp_path, *overrides)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
