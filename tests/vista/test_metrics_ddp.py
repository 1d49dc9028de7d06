"""Metric states reduce exactly across DDP ranks: 2 gloo processes, each with half the data, give the
single-process result on all of it."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.ports import free_port
from vista.metrics import TaskMetrics

pytestmark = pytest.mark.timeout(120)


def data() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "depth": torch.rand(4, 1, 8, 8, generator=g) * 5,
        "seg": torch.randint(0, 4, (4, 8, 8), generator=g),
        "normal": torch.nn.functional.normalize(torch.randn(4, 3, 8, 8, generator=g), dim=1),
    }
    batch["depth"][0, 0, :2] = 0  # invalid pixels
    batch["seg"][1, :3] = 255  # ignored pixels
    pred = {
        "depth": torch.rand(4, 1, 8, 8, generator=g) * 5 + 0.1,
        "seg": torch.randn(4, 4, 8, 8, generator=g),
        "normal": torch.nn.functional.normalize(torch.randn(4, 3, 8, 8, generator=g), dim=1),
    }
    return pred, batch


def _worker(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    pred, batch = data()
    part = slice(rank * 2, rank * 2 + 2)
    metrics = TaskMetrics(("depth", "seg", "normal"), num_classes=4)
    metrics.update({k: v[part] for k, v in pred.items()}, {k: v[part] for k, v in batch.items()})
    queue.put((rank, metrics.compute("val")))
    dist.destroy_process_group()


def test_two_ranks_reduce_to_the_single_process_result() -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=90) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    pred, batch = data()
    single = TaskMetrics(("depth", "seg", "normal"), num_classes=4)
    single.update(pred, batch)
    expected = single.compute("val")
    for rank in (0, 1):
        assert results[rank].keys() == expected.keys()
        for k, v in expected.items():
            assert results[rank][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (rank, k)
