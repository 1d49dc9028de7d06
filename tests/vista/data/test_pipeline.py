"""prepare -> shard -> readers: round trips, determinism, bad input, fail-fast, HTTP."""

from __future__ import annotations

import functools
import hashlib
import http.server
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import ROOT, break_sample, rewrite_member, shared_path
from vista.config import load_params
from vista.data import shards_dir
from vista.data.manifest import PrepareError, prepare, read_manifest, ref_of
from vista.data.shards import ShardError, write_shards
from vista.data.sources.base import SampleRef, Source, get_source
from vista.data.transforms import TrainTransform
from vista.data.webdata import eval_loader, iter_samples, load_index, shard_urls, train_loader

pytestmark = pytest.mark.timeout(300)


def build(source: Source, tmp: Path, splits=("train", "val"), **shard_kw) -> tuple[Path, Path]:
    prepared = tmp / "prepared"
    prepare(source, splits, prepared)
    out = tmp / "shards"
    write_shards(source, prepared / "manifest.parquet", out, **{"min_shards": 1, **shard_kw})
    return prepared / "manifest.parquet", out


def read_all_ranks(location: str, split: str, monkeypatch: pytest.MonkeyPatch, world: int = 2, workers: int = 2):
    """Keys and samples seen by every rank (simulated through RANK/WORLD_SIZE) and loader worker."""
    seen: dict[str, dict] = {}
    keys: list[str] = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        for batch in eval_loader(location, split, batch_size=3, num_workers=workers):
            for i, key in enumerate(batch["key"]):
                keys.append(key)
                seen[key] = {k: v[i] for k, v in batch.items() if k != "key"}
    return keys, seen


def assert_exactly_once(keys: list[str], manifest_keys: list[str]) -> None:
    counts = Counter(keys)
    assert sorted(counts) == sorted(manifest_keys)
    assert set(counts.values()) == {1}


def test_synthetic_round_trip_2_ranks_x_2_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = get_source("synthetic", "", height=24, width=32, counts={"train": 10, "val": 9})
    manifest, shards = build(src, tmp_path, max_samples=2)
    rows = [r for r in read_manifest(manifest) if r["split"] == "val"]
    keys, seen = read_all_ranks(str(shards), "val", monkeypatch)
    assert_exactly_once(keys, [r["key"] for r in rows])
    for r in rows:
        ref = src.load(ref_of(r))
        got = seen[r["key"]]
        rgb = (
            got["rgb"] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
            + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        ) * 255
        assert np.abs(rgb.permute(1, 2, 0).numpy() - ref["rgb"]).max() < 1e-3  # exact up to float32 maths
        assert np.array_equal(got["seg"].numpy(), ref["seg"].astype(np.int64))  # bit-exact labels
        assert np.abs(got["depth"][0].numpy() - ref["depth"]).max() <= 0.0005 + 1e-6  # 1 mm storage
        assert np.abs(got["normal"].permute(1, 2, 0).numpy() - ref["normal"]).max() < 1e-3  # float16


def test_camvid_val_round_trip_2_ranks_x_2_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = get_source("camvid", shared_path("data", "camvid"))
    manifest, shards = build(src, tmp_path, splits=("val",), max_samples=16)
    rows = read_manifest(manifest)
    assert len(rows) == 101
    keys, _ = read_all_ranks(str(shards), "val", monkeypatch)
    assert_exactly_once(keys, [r["key"] for r in rows])
    # decoded members are identical to the source files
    decoded = {s["key"]: s for s in iter_samples(str(shards), "val")}
    for r in rows[::10]:
        ref = src.load(ref_of(r))
        assert np.array_equal(decoded[r["key"]]["rgb"], ref["rgb"])
        assert np.array_equal(decoded[r["key"]]["seg"], ref["seg"].astype(np.int64))
    assert decoded[rows[0]["key"]]["seg"].max() <= 11  # void id 11 kept as is


def test_shards_are_byte_identical_across_runs_and_bounded(tmp_path: Path) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"train": 7, "val": 2})
    _, a = build(src, tmp_path / "a", max_samples=3)
    _, b = build(src, tmp_path / "b", max_samples=3)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert files == ["shards.json", "train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    index = load_index(str(a))
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [3, 3, 1]
    for s in index["splits"]["train"]["shards"]:
        assert hashlib.sha256((a / s["file"]).read_bytes()).hexdigest() == s["sha256"]
        assert (a / s["file"]).stat().st_size == s["bytes"]
    assert index["totals"] == {"samples": 9, "shards": 4, "bytes": sum((a / f).stat().st_size for f in files[1:])}
    # a different seed shuffles differently
    _, c = build(src, tmp_path / "c", max_samples=3, seed=1)
    assert (c / "train-000000.tar").read_bytes() != (a / "train-000000.tar").read_bytes()


def test_byte_bound_closes_shards(tmp_path: Path) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"train": 6})
    _, out = build(src, tmp_path, splits=("train",), max_samples=100, max_bytes=8000)
    shards = load_index(str(out))["splits"]["train"]["shards"]
    assert len(shards) > 1 and sum(s["samples"] for s in shards) == 6
    payloads = []  # per shard: the payload bytes of each sample, in order
    for s in shards:
        with tarfile.open(out / s["file"]) as tar:
            sizes: dict[str, int] = {}
            for m in tar.getmembers():
                key = m.name.split(".", 1)[0]
                sizes[key] = sizes.get(key, 0) + m.size
        payloads.append(list(sizes.values()))
    # a shard closes once its payload reached max_bytes, not earlier: it passes the bound by less than a sample
    assert all(sum(p) >= 8000 for p in payloads[:-1]), payloads
    assert all(sum(p[:-1]) < 8000 for p in payloads), payloads


def test_min_shards_spreads_small_splits(tmp_path: Path) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"train": 10, "val": 2})
    _, out = build(src, tmp_path, max_samples=64, min_shards=4)
    index = load_index(str(out))
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [3, 3, 3, 1]
    assert [s["samples"] for s in index["splits"]["val"]["shards"]] == [1, 1]  # capped by the sample count


def test_no_temporary_or_partial_files_are_left(tmp_path: Path) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"train": 4})
    _, out = build(src, tmp_path, splits=("train",), max_samples=2)
    assert not list(out.glob(".*"))


def test_a_failed_reshard_keeps_the_previous_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"train": 4, "val": 2})
    manifest, out = build(src, tmp_path, max_samples=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    load = src.load

    def failing_load(ref: SampleRef):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 3:  # mid-split, after a tar of the new run was written
            raise OSError("disk gone")
        return load(ref)

    monkeypatch.setattr(src, "load", failing_load)
    with pytest.raises(OSError, match="disk gone"):
        write_shards(src, manifest, out, max_samples=1, min_shards=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "shards"]  # no temporary folder left
    # and a successful re-shard replaces them
    monkeypatch.setattr(src, "load", load)
    write_shards(src, manifest, out, max_samples=1, min_shards=1)
    assert len(list(out.glob("train-*.tar"))) == 4


@pytest.mark.parametrize("bad", ["../outside.tar", "/etc/x.tar", "sub/val-000000.tar", ".hidden.tar", "x.py", 3])
def test_index_file_entries_stay_inside_the_shard_folder(tmp_path: Path, bad: object) -> None:
    import json

    src = get_source("synthetic", "", height=16, width=20, counts={"val": 2})
    _, out = build(src, tmp_path, splits=("val",))
    index = json.loads((out / "shards.json").read_text())
    index["splits"]["val"]["shards"][0]["file"] = bad
    (out / "shards.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"shards\.json: shard file entry .* not a plain \.tar name"):
        shard_urls(str(out), "val")


def test_an_index_that_is_not_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "shards.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match=r"shards\.json: not a shard index"):
        load_index(str(tmp_path))


def test_a_corrupt_shard_fails_the_read_naming_it(tmp_path: Path) -> None:
    import pickle

    from vista.data.webdata import ShardReadError

    src = get_source("synthetic", "", height=16, width=20, counts={"val": 4})
    _, out = build(src, tmp_path, splits=("val",), max_samples=2)
    assert len(list(iter_samples(str(out), "val"))) == 4
    tar = out / "val-000001.tar"
    # 64 flipped bytes inside a normal map: still decodes, but the shard is not what was written
    rewrite_member(tar, "normal.npy", lambda d: d[:-64] + bytes(b ^ 0xFF for b in d[-64:]))
    with pytest.raises(ShardReadError, match=r"val-000001\.tar: sha256 .* differs from shards\.json"):
        list(iter_samples(str(out), "val"))
    with pytest.raises(ShardReadError, match=r"val-000001\.tar: sha256"):
        for _ in eval_loader(str(out), "val", batch_size=2, num_workers=2):
            pass
    # a truncated tar: one error naming the shard, and one that crosses process boundaries
    tar.write_bytes(tar.read_bytes()[:700])
    with pytest.raises(ShardReadError, match=r"val-000001\.tar: unreadable shard") as err:
        list(iter_samples(str(out), "val"))
    assert pickle.loads(pickle.dumps(err.value)).args == err.value.args


def _tampered_index(tmp_path: Path, change) -> Path:  # noqa: ANN001
    """Val shards of 4 samples in 2 tars, with ``change(index)`` applied to their shards.json."""
    import json

    src = get_source("synthetic", "", height=16, width=20, counts={"val": 4})
    _, out = build(src, tmp_path, splits=("val",), max_samples=2)
    index = json.loads((out / "shards.json").read_text())
    change(index["splits"]["val"])
    (out / "shards.json").write_text(json.dumps(index))
    return out


@pytest.mark.parametrize("sha", [None, "", "0" * 63, "X" * 64])
def test_every_shard_needs_its_sha256(tmp_path: Path, sha: object) -> None:
    """A missing, blank or malformed sha256 is an error, never a check turned off (a tampered tar would
    then evaluate without a word)."""

    def change(split: dict) -> None:
        if sha is None:
            del split["shards"][1]["sha256"]
        else:
            split["shards"][1]["sha256"] = sha

    out = _tampered_index(tmp_path, change)
    for read in (lambda: list(iter_samples(str(out), "val")), lambda: eval_loader(str(out), "val", 2)):
        with pytest.raises(ValueError, match=r"shard 'val-000001\.tar' of split 'val' has no valid sha256"):
            read()


def test_sample_counts_are_checked_not_trusted(tmp_path: Path) -> None:
    """The split's count must be what its shards list (up front, naming both numbers); a shard's count
    must be what its tar holds (as it is read); an empty split is refused before any reading."""

    def total(split: dict) -> None:
        split["samples"] = 400

    out = _tampered_index(tmp_path / "a", total)
    with pytest.raises(ValueError, match=r"split 'val' says 400 samples but its shards list 4"):
        eval_loader(str(out), "val", 2)
    with pytest.raises(ValueError, match=r"split 'val' says 400 samples"):
        train_loader(str(out), 2, split="val")

    def per_shard(split: dict) -> None:
        split["shards"][0]["samples"], split["samples"] = 200, 202

    from vista.data.webdata import ShardReadError

    out = _tampered_index(tmp_path / "b", per_shard)
    with pytest.raises(ShardReadError, match=r"val-000000\.tar: holds 2 samples, shards\.json says 200"):
        list(iter_samples(str(out), "val"))

    def empty(split: dict) -> None:
        split["shards"], split["samples"] = [], 0

    out = _tampered_index(tmp_path / "c", empty)
    with pytest.raises(ValueError, match=r"split 'val' has no samples"):
        train_loader(str(out), 2, split="val")


def test_an_undecodable_sample_is_named_by_shard_and_key(tmp_path: Path) -> None:
    from vista.data.webdata import ShardReadError

    src = get_source("synthetic", "", height=16, width=20, counts={"val": 2})
    _, out = build(src, tmp_path, splits=("val",), max_samples=1)
    key = break_sample(out, "val-000000.tar")  # a truncated PNG; the index agrees: only the decode can fail
    with pytest.raises(ShardReadError, match=rf"val-000000\.tar: sample '{key}' cannot be decoded"):
        list(iter_samples(str(out), "val"))
    with pytest.raises(ShardReadError, match=rf"val-000000\.tar: sample '{key}' cannot be"):
        list(eval_loader(str(out), "val", batch_size=2))


def test_skipped_bad_samples_are_counted_and_no_other_sample_is_lost(tmp_path: Path) -> None:
    """``on_bad_sample="skip"`` at read time: the bad samples are dropped and named in the batches'
    ``skipped``; every other sample arrives exactly once (evaluation) and training batches stay full."""
    src = get_source("synthetic", "", height=16, width=20, counts={"val": 6})
    _, out = build(src, tmp_path, splits=("val",), max_samples=2)
    every = {s["key"] for s in iter_samples(str(out), "val")}
    named = {
        f"{out}/{tar}: sample {break_sample(out, tar, i)!r}"
        for tar, i in (("val-000000.tar", 0), ("val-000002.tar", 1))
    }
    bad = {n.split("'")[1] for n in named}
    for workers in (0, 2):
        batches = list(eval_loader(str(out), "val", batch_size=4, num_workers=workers, on_bad_sample="skip"))
        keys = [k for b in batches for k in b.get("key", [])]
        assert sorted(keys) == sorted(every - bad)  # nothing else lost, nothing twice
        skipped = [name for b in batches for name in b["skipped"]]
        assert sorted(skipped) == sorted(named)  # each bad sample counted once, by shard and key
        assert all(b["rgb"].shape[0] == len(b["key"]) for b in batches if "rgb" in b)

    loader = train_loader(
        str(out), batch_size=2, split="val", shuffle_buffer=4, seed=0, samples_per_epoch=24, on_bad_sample="skip"
    )
    batches = list(loader)
    assert len(batches) == 12 and all(b["rgb"].shape[0] == 2 for b in batches)  # full batches all the same
    drawn = {k for b in batches for k in b["key"]}
    assert drawn <= every - bad and drawn
    names = [n for b in batches for n in b["skipped"]]
    assert names and set(names) <= named


def tarfile_keys(tar: Path) -> list[str]:
    import tarfile

    with tarfile.open(tar) as t:
        return sorted({m.name.split(".", 1)[0] for m in t.getmembers()})


def test_changed_raw_data_is_caught_at_sharding(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    for d in ("val", "valannot"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(root / "val" / "a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(root / "valannot" / "a.png")
    src = get_source("camvid", root)
    prepare(src, ["val"], tmp_path / "prep")
    Image.fromarray(np.ones((4, 5), np.uint8)).save(root / "valannot" / "a.png")
    with pytest.raises(ShardError, match=r"val/a .*a\.png.*content changed"):
        write_shards(src, tmp_path / "prep" / "manifest.parquet", tmp_path / "shards")


# -- bad input ------------------------------------------------------------------------------------


class ArraySource(Source):
    """A source over in-memory arrays, to inject bad depth."""

    name = "arrays"
    tasks = ("depth", "seg")
    classes = ("a", "b")
    void_id = 255

    def __init__(self, samples: dict[str, dict]) -> None:
        super().__init__("")
        self.samples = samples

    def list(self, split: str) -> list[SampleRef]:
        return [SampleRef(k, split, {"rgb": f"/data/{k}.png", "depth": f"/data/{k}_depth.png"}) for k in self.samples]

    def load(self, ref: SampleRef) -> dict:
        return {"key": ref.key, **self.samples[ref.key]}


def _ok() -> dict:
    return {
        "rgb": np.zeros((4, 4, 3), np.uint8),
        "depth": np.ones((4, 4), np.float32),
        "seg": np.zeros((4, 4), np.uint8),
    }


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"depth": np.full((4, 4), np.nan, np.float32)}, r"bad_depth\.png: depth has 16 NaN"),
        ({"depth": -np.ones((4, 4), np.float32)}, r"bad_depth\.png: depth has 16 negative"),
        (
            {"depth": np.ones((3, 4), np.float32)},
            r"bad_depth\.png: depth size \(3, 4\) does not match rgb size \(4, 4\)",
        ),
        (
            {"seg": np.full((4, 4), 7, np.uint8)},
            r"bad\.png: label id\(s\) \[7\] outside the class set 0\.\.1 ∪ \{255\}",
        ),
    ],
)
def test_bad_samples_error_or_rejected_row(tmp_path: Path, patch: dict, reason: str) -> None:
    samples = {"good": _ok(), "bad": {**_ok(), **patch}}
    with pytest.raises(PrepareError, match=reason):
        prepare(ArraySource(samples), ["train"], tmp_path / "a")
    result = prepare(ArraySource(samples), ["train"], tmp_path / "b", on_bad_sample="skip")
    assert result.counts == {"train": 1} and result.rejected_counts == {"train": 1}
    import pyarrow.parquet as pq

    rejected = pq.read_table(result.rejected).to_pylist()
    assert [r["key"] for r in rejected] == ["bad"]
    assert pytest.importorskip("re").search(reason, rejected[0]["reason"])
    assert [r["key"] for r in read_manifest(result.manifest)] == ["good"]


def _camvid_fixture(root: Path, label_value: int = 3, size=(4, 5), label_size=(4, 5)) -> None:
    for d in ("train", "trainannot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 9, np.uint8)).save(root / "train" / "x1.png")
    Image.fromarray(np.full(label_size, label_value, np.uint8)).save(root / "trainannot" / "x1.png")
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "train" / "x2.png")
    Image.fromarray(np.zeros(size, np.uint8)).save(root / "trainannot" / "x2.png")


def test_unreadable_image_named(tmp_path: Path) -> None:
    _camvid_fixture(tmp_path)
    (tmp_path / "train" / "x1.png").write_bytes(b"not a png")
    with pytest.raises(PrepareError, match=r"train/x1\.png: unreadable image"):
        prepare(get_source("camvid", tmp_path), ["train"], tmp_path / "out")
    result = prepare(get_source("camvid", tmp_path), ["train"], tmp_path / "out", on_bad_sample="skip")
    assert result.counts["train"] == 1 and result.rejected_counts["train"] == 1


def test_missing_label_file_named(tmp_path: Path) -> None:
    _camvid_fixture(tmp_path)
    (tmp_path / "trainannot" / "x2.png").unlink()
    with pytest.raises(PrepareError, match=r"trainannot/x2\.png: file not found"):
        prepare(get_source("camvid", tmp_path), ["train"], tmp_path / "out")


def test_label_out_of_class_set_and_size_mismatch_named(tmp_path: Path) -> None:
    _camvid_fixture(tmp_path / "a", label_value=12)
    with pytest.raises(
        PrepareError, match=r"trainannot/x1\.png: label id\(s\) \[12\] outside the class set 0\.\.10 ∪ \{11\}"
    ):
        prepare(get_source("camvid", tmp_path / "a"), ["train"], tmp_path / "out")
    _camvid_fixture(tmp_path / "b", label_size=(4, 6))
    with pytest.raises(PrepareError, match=r"trainannot/x1\.png: seg size \(4, 6\) does not match rgb size \(4, 5\)"):
        prepare(get_source("camvid", tmp_path / "b"), ["train"], tmp_path / "out")


# -- readers --------------------------------------------------------------------------------------


def test_eval_fails_fast_with_too_few_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"val": 6})
    _, out = build(src, tmp_path, splits=("val",), max_samples=2)  # 3 shards
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"3 shard\(s\) but 2 rank\(s\) × 2 loader worker\(s\) = 4 readers"):
        eval_loader(str(out), "val", batch_size=2, num_workers=2)


def test_train_loader_epochs_and_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = get_source("synthetic", "", height=24, width=32, counts={"train": 10})
    _, out = build(src, tmp_path, splits=("train",), max_samples=3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = train_loader(
        str(out), batch_size=2, transform=TrainTransform(crop_size=(16, 16)), num_workers=2, shuffle_buffer=4
    )
    for _ in range(2):  # two epochs: ceil(10 / (2 ranks * 2)) = 3 batches each
        batches = list(loader)
        assert len(batches) == 3
        for b in batches:
            assert b["rgb"].shape == (2, 3, 16, 16) and b["seg"].shape == (2, 16, 16)
            assert b["depth"].shape == (2, 1, 16, 16) and b["normal"].shape == (2, 3, 16, 16)


def test_train_stream_is_repeatable_for_a_seed(tmp_path: Path) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"train": 12})
    _, out = build(src, tmp_path, splits=("train",), max_samples=3)

    def keys(seed: int) -> list[str]:
        torch.manual_seed(0)  # the transforms' RNG
        loader = train_loader(str(out), batch_size=2, num_workers=0, shuffle_buffer=8, seed=seed)
        return [k for _ in range(2) for b in loader for k in b["key"]]

    assert keys(1) == keys(1)
    assert keys(1) != keys(2)


def test_shards_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = get_source("synthetic", "", height=16, width=20, counts={"val": 5})
    _, out = build(src, tmp_path, splits=("val",), max_samples=2)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None  # quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert load_index(url)["splits"]["val"]["samples"] == 5
        keys = [k for b in eval_loader(url, "val", batch_size=2) for k in b["key"]]
        local = [k for b in eval_loader(str(out), "val", batch_size=2) for k in b["key"]]
        assert keys == local and len(keys) == 5

        # training takes data.shards_dir as a URL prefix (shards on object storage, multi-node)
        from pipelines.ray_train import require_shards
        from vista.data.webdata import data_version

        www = tmp_path / "www"
        www.mkdir()
        (www / "synthetic").symlink_to(out)
        server.RequestHandlerClass = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
        params = load_params(ROOT / "params.yaml", [f"data.shards_dir={url}/"])
        assert require_shards(params) == f"{url}/synthetic"
        assert data_version(f"{url}/synthetic") == data_version(str(out))
        with pytest.raises(FileNotFoundError, match="nope/synthetic/shards.json"):
            require_shards(load_params(ROOT / "params.yaml", [f"data.shards_dir={url}/nope"]))
        with pytest.raises(ValueError, match="shard stage writes to a local folder"):
            shards_dir(params.data)
    finally:
        server.shutdown()
        server.server_close()


def test_shard_index_counts_class_pixels_for_balanced_losses(tmp_path: Path) -> None:
    a = _ok()  # class 0 everywhere (16 px)
    b = _ok()
    b["seg"][:2] = 1  # 8 px of class 1, 8 of class 0
    b["seg"][0, 0] = 255  # one void pixel: counted nowhere
    src = ArraySource({"a": a, "b": b})
    _, shards = build(src, tmp_path, splits=("train",))
    train = load_index(str(shards))["splits"]["train"]
    assert train["class_pixels"] == [16 + 8, 7]
    # labelled pixels of the images containing each class: class 0 in a (16) and b (15); class 1 in b
    assert train["class_image_pixels"] == [16 + 15, 15]
