"""The shard step: manifest -> ``<split>-NNNNNN.tar`` WebDataset shards + ``shards.json``.

- Samples are shuffled at sharding time with a seed (so a shard holds a mix of the dataset).
- ``wds.ShardWriter`` starts a new shard once the current one holds ``max_samples`` samples or its
  payload (the samples' encoded bytes, tar headers not counted) reached ``max_bytes``: a shard passes
  ``max_bytes`` by less than one sample.
- Byte-identical output for identical input and params (fixed tar headers, deterministic encoders).
- Atomic: the shards are written into a temporary sibling folder that replaces the output folder only
  when every split is complete, so a failed or interrupted re-shard leaves the previous shards as they were.
- Every sample is re-read from the source and checked against the manifest's content hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from ..files import write_json
from .codec import encode_sample
from .manifest import content_hash, read_manifest, ref_of
from .sources.base import Source

FORMAT_VERSION = 1


class ShardError(RuntimeError):
    """The raw data no longer matches the manifest, or the output cannot be written."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _ShardSink:
    """``wds.ShardWriter`` over the numbered tars of one split, recording ``{file, samples, bytes, sha256}``
    of each finished tar (computed from the file on disk)."""

    def __init__(self, out_dir: Path, split: str, max_samples: int, max_bytes: int) -> None:
        self.done: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        pattern = str(out_dir / split).replace("%", "%%") + "-%06d.tar"
        # fixed mtime/user/group/mode, USTAR headers, no compression: identical input gives identical bytes.
        # ShardWriter opens its first tar at once (a split always has a sample: splits come from the
        # manifest's rows); no per-file temporary names are needed: the whole folder is swapped at the end.
        self._writer = wds.ShardWriter(
            pattern,
            maxcount=max_samples,
            maxsize=max_bytes,
            post=self._finished,
            verbose=0,
            user="vista",
            group="vista",
            mode=0o444,
            mtime=0,
            encoder=False,
            compress=False,
            format=tarfile.USTAR_FORMAT,
        )

    def add(self, encoded: dict[str, Any]) -> None:
        self._writer.write(encoded)
        name = self._writer.fname  # the tar this sample went into
        self._counts[name] = self._counts.get(name, 0) + 1

    def _finished(self, fname: str) -> None:
        path = Path(fname)
        self.done.append(
            {
                "file": path.name,
                "samples": self._counts.get(fname, 0),
                "bytes": path.stat().st_size,
                "sha256": _sha256(path),
            }
        )

    def close(self) -> None:
        self._writer.close()


class _ClassStats:
    """Per-class pixel counts of a split (void excluded), for class-balanced losses:
    ``class_pixels[c]`` and ``class_image_pixels[c]`` (labelled pixels of the images that contain c)."""

    def __init__(self, num_classes: int, void_id: int | None) -> None:
        self.n, self.void = num_classes, void_id
        self.pixels = np.zeros(num_classes, np.int64)
        self.image_pixels = np.zeros(num_classes, np.int64)

    def add(self, seg: np.ndarray) -> None:
        ids = seg.ravel().astype(np.int64)
        counts = np.bincount(ids[ids < self.n], minlength=self.n)[: self.n]
        self.pixels += counts
        self.image_pixels += np.where(counts > 0, counts.sum(), 0)

    def as_dict(self) -> dict[str, list[int]]:
        return {"class_pixels": self.pixels.tolist(), "class_image_pixels": self.image_pixels.tolist()}


def write_shards(
    source: Source,
    manifest: str | Path,
    out_dir: str | Path,
    max_samples: int = 64,
    max_bytes: int = 256 * 2**20,
    min_shards: int = 8,
    seed: int = 0,
    rgb_format: str = "png",
    jpeg_quality: int = 95,
    progress: Callable[[str, int], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Write the shards of every split in ``manifest`` and return the ``shards.json`` index.

    Each split gets at least ``min(min_shards, samples)`` shards (so that evaluation can give every
    rank × loader worker a shard), each of at most ``max_samples`` samples; a shard is closed once its payload
    reached ``max_bytes`` (so it passes it by less than one sample).

    Raises:
        ShardError: a sample's content changed since the prepare step (names the sample and its files).
    """
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = final.with_name(f".{final.name}.partial")  # same filesystem: the swap is two renames
    shutil.rmtree(out, ignore_errors=True)  # left by an interrupted run
    out.mkdir()
    try:
        index = _write_splits(
            source, manifest, out, max_samples, max_bytes, min_shards, seed, rgb_format, jpeg_quality, progress
        )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(out, final)
    shutil.rmtree(old, ignore_errors=True)
    return index


def _write_splits(
    source: Source,
    manifest: str | Path,
    out: Path,
    max_samples: int,
    max_bytes: int,
    min_shards: int,
    seed: int,
    rgb_format: str,
    jpeg_quality: int,
    progress: Callable[[str, int], Callable[[], None]] | None,
) -> dict[str, Any]:
    rows = read_manifest(manifest)
    splits: dict[str, Any] = {}
    for split in sorted({r["split"] for r in rows}):
        split_rows = sorted((r for r in rows if r["split"] == split), key=lambda r: r["key"])
        order = np.random.default_rng([seed, zlib.crc32(split.encode())]).permutation(len(split_rows))
        per_shard = min(max_samples, math.ceil(len(split_rows) / max(1, min(min_shards, len(split_rows)))))
        sink = _ShardSink(out, split, per_shard, max_bytes)
        stats = _ClassStats(len(source.classes), source.void_id) if "seg" in source.tasks else None
        tick = progress(split, len(split_rows)) if progress else (lambda: None)
        with contextlib.closing(sink):  # closed on an error too (its open tar is not left to the GC)
            for i in order:
                row = split_rows[int(i)]
                sample = source.load(ref_of(row))
                if content_hash(sample) != row["content_hash"]:
                    raise ShardError(
                        f"{split}/{row['key']} ({', '.join(row['source'].values()) or 'procedural'}): content changed "
                        "since the prepare stage; re-run `vista prepare`"
                    )
                sample.setdefault("meta", {}).update({"split": split, "source": row["source"]})
                if stats is not None and "seg" in sample:
                    stats.add(sample["seg"])
                sink.add(encode_sample(sample, rgb_format, jpeg_quality))
                tick()
        splits[split] = {
            "samples": sum(s["samples"] for s in sink.done),
            "bytes": sum(s["bytes"] for s in sink.done),
            "shards": sink.done,
            **(stats.as_dict() if stats is not None else {}),
        }
    index = {
        "format_version": FORMAT_VERSION,
        "dataset": source.name,
        "classes": list(source.classes),
        "void_id": source.void_id,
        "tasks": list(source.tasks),
        "params": {
            "max_samples": max_samples,
            "max_bytes": max_bytes,
            "seed": seed,
            "rgb_format": rgb_format,
            "jpeg_quality": jpeg_quality,
        },
        "splits": splits,
        "totals": {
            "samples": sum(s["samples"] for s in splits.values()),
            "bytes": sum(s["bytes"] for s in splits.values()),
            "shards": sum(len(s["shards"]) for s in splits.values()),
        },
    }
    write_json(out / "shards.json", index)
    return index
