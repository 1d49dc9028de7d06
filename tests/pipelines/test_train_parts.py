"""What a training run is assembled from (no Ray needed): class weights of the segmentation loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT
from vista.config import load_params


def _index(**train: object) -> dict:
    return {"splits": {"train": {"samples": 4, **train}}}


def test_class_weights_from_the_shard_index() -> None:
    from vista.recipe import seg_class_weights

    p = load_params(ROOT / "params.yaml", ["model.num_classes=3", "train.class_weights=median_freq"])
    index = _index(class_pixels=[80, 20, 10], class_image_pixels=[200, 100, 100])
    assert seg_class_weights(p, index) == pytest.approx([0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="re-run `vista shard`"):
        seg_class_weights(p, _index())
    explicit = load_params(ROOT / "params.yaml", ["model.num_classes=3", "train.class_weights=[1, 2, 3]"])
    assert seg_class_weights(explicit, _index()) == [1.0, 2.0, 3.0]
    wrong = load_params(ROOT / "params.yaml", ["model.num_classes=4", "train.class_weights=[1, 2, 3]"])
    with pytest.raises(ValueError, match="3 values; model.num_classes is 4"):
        seg_class_weights(wrong, _index())
    assert seg_class_weights(load_params(ROOT / "params.yaml"), index) is None  # `none`


@pytest.mark.parametrize("address", [None, "127.0.0.1:6379"])
def test_ray_is_quiet_unless_verbose(monkeypatch: pytest.MonkeyPatch, address: str | None) -> None:
    """``ray.init`` gets Ray's warnings only and no worker output by default; ``--verbose`` restores both,
    for a local Ray and inside ``ray job submit`` (``RAY_ADDRESS``)."""
    import logging

    import ray

    from pipelines import ray_train

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE"):  # ray_init sets them: restored after the test
        monkeypatch.setenv(var, "x")
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_train.ray_init()
    ray_train.ray_init(verbose=True)
    quiet, verbose = calls
    assert quiet["log_to_driver"] is False and quiet["logging_level"] == logging.WARNING
    assert verbose["log_to_driver"] is True and verbose["logging_level"] == logging.INFO
    assert ("dashboard_port" in quiet) is (address is None)
    if address is None:  # the local dashboard: a port no other Ray instance here can draw, and the workers know it
        assert 20000 <= verbose["dashboard_port"] < ephemeral_low()
        assert os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{verbose['dashboard_port']}"


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_come_from_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers that vista or a test starts listen on a port the kernel never hands out to ``bind(0)`` and that
    Ray never draws (it draws above such a port); distinct draws; the kernel picks when that range is empty."""
    import socket

    from pipelines import ports

    drawn = [ports.free_port() for _ in range(20)]
    assert all(20000 <= p < ephemeral_low() for p in drawn) and len(set(drawn)) > 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", drawn[-1]))  # free indeed
    monkeypatch.setattr(ports, "LOW", 65535)
    assert ports.free_port() >= ephemeral_low()


def test_ray_storage_folder_is_anchored_at_the_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.storage_path / tune.storage_path: a relative folder from $DVC_ROOT when DVC runs the stage (so a
    --temp or queued experiment keeps its Ray run in the project), else from the working directory."""
    from pipelines.ray_train import storage_location

    project = tmp_path.resolve()
    copy = project / ".dvc" / "tmp" / "exps" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert storage_location("runs/ray") == str(copy / "runs" / "ray")
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert storage_location("runs/ray") == str(project / "runs" / "ray")
    assert storage_location("/srv/ray") == "/srv/ray"
    uri = "s3://vista/ray?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage_location(uri) == uri


def test_two_processes_restoring_one_remote_checkpoint_never_share_its_files(tmp_path: Path) -> None:
    """Two ranks on one host restore the same checkpoint from object storage: each reads its own download,
    so the second download never rewrites the file the first one is reading (with Ray's
    ``Checkpoint.as_directory`` both got one shared folder, written again by the second: a torn ``model.pt``
    in CI after a node failure, ray-project/ray#48726). A local checkpoint is read in place."""
    import pyarrow.fs
    import torch
    from ray.train import Checkpoint

    from pipelines.ray_train import checkpoint_files

    store = tmp_path / "bucket"
    (store / "ckpt").mkdir(parents=True)
    torch.save({"epoch": 3}, store / "ckpt" / "model.pt")
    remote = pyarrow.fs.SubTreeFileSystem(str(store), pyarrow.fs.LocalFileSystem())  # not the local filesystem
    checkpoint = Checkpoint("ckpt", filesystem=remote)
    with checkpoint_files(checkpoint) as first:
        seen = (first / "model.pt").stat()
        with checkpoint_files(checkpoint) as second:
            assert second != first and not second.is_relative_to(store)
            assert torch.load(second / "model.pt", weights_only=True) == {"epoch": 3}
        after = (first / "model.pt").stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (seen.st_ino, seen.st_mtime_ns, seen.st_size)
        assert torch.load(first / "model.pt", weights_only=True) == {"epoch": 3}
        assert not second.exists()  # removed when its reader is done
    assert not first.exists()
    with checkpoint_files(Checkpoint(str(store / "ckpt"))) as local:
        assert local == store / "ckpt"
