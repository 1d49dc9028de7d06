"""The prepare step: raw dataset -> validated ``manifest.parquet`` (+ ``rejected.parquet``).

One manifest row per sample: key, split, source paths, index, sizes, targets present, content hash.
Bad samples (unreadable image, RGB/target size mismatch, label id outside the class set, NaN or negative
depth) stop the run with an error naming the file, or, with ``on_bad_sample="skip"``, become rows of
``rejected.parquet`` with the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .sources.base import Sample, SampleError, SampleRef, Source

log = logging.getLogger(__name__)

TARGETS = ("depth", "seg", "normal")
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("dataset", pa.string()),
        ("source", pa.string()),  # JSON: role -> path
        ("index", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("targets", pa.list_(pa.string())),
        ("content_hash", pa.string()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [("key", pa.string()), ("split", pa.string()), ("source", pa.string()), ("reason", pa.string())]
)


class PrepareError(ValueError):
    """A bad sample stopped the prepare step (``on_bad_sample: error``); the message names the file."""


def content_hash(sample: Sample) -> str:
    """sha256 over the key and every array (dtype, shape, bytes) of a sample."""
    h = hashlib.sha256(sample["key"].encode())
    for name in ("rgb", *TARGETS):
        if name in sample:
            a = np.ascontiguousarray(sample[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _where(ref: SampleRef, role: str) -> str:
    return ref.paths.get(role) or ref.paths.get("rgb") or next(iter(ref.paths.values()), f"{ref.split}/{ref.key}")


def validate(sample: Sample, ref: SampleRef, source: Source) -> None:
    """Raise :class:`SampleError` naming the file when a loaded sample is not usable."""
    rgb = sample.get("rgb")
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        raise SampleError(f"{_where(ref, 'rgb')}: rgb must be uint8 H×W×3, got {shape}")
    h, w = rgb.shape[:2]
    for t in TARGETS:
        if t in sample and tuple(sample[t].shape[:2]) != (h, w):
            raise SampleError(
                f"{_where(ref, t)}: {t} size {tuple(sample[t].shape[:2])} does not match rgb size {(h, w)}"
            )
    if "seg" in sample:
        ids = np.unique(sample["seg"])
        allowed = set(range(source.num_classes)) | ({source.void_id} if source.void_id is not None else set())
        bad = [int(i) for i in ids if int(i) not in allowed]
        if bad:
            void = f" ∪ {{{source.void_id}}}" if source.void_id is not None else ""
            raise SampleError(
                f"{_where(ref, 'seg')}: label id(s) {bad[:5]} outside the class set 0..{source.num_classes - 1}{void}"
            )
    if "depth" in sample:
        d = sample["depth"]
        if np.isnan(d).any():
            raise SampleError(f"{_where(ref, 'depth')}: depth has {int(np.isnan(d).sum())} NaN value(s)")
        if (d < 0).any():
            raise SampleError(f"{_where(ref, 'depth')}: depth has {int((d < 0).sum())} negative value(s)")
    if "normal" in sample and not np.isfinite(sample["normal"]).all():
        raise SampleError(f"{_where(ref, 'normal')}: normals have non-finite values")


@dataclass
class PrepareResult:
    manifest: Path
    rejected: Path
    counts: dict[str, int]  # split -> accepted samples
    rejected_counts: dict[str, int]


def prepare(
    source: Source,
    splits: Iterable[str],
    out_dir: str | Path,
    on_bad_sample: str = "error",
    progress: Callable[[str, int], Callable[[], None]] | None = None,
) -> PrepareResult:
    """Read and validate every sample of ``splits``; write ``manifest.parquet`` and ``rejected.parquet``.

    Args:
        source: the dataset adapter.
        out_dir: ``data/prepared/<dataset>``.
        on_bad_sample: ``error`` (stop, naming the file) or ``skip`` (a rejected row with the reason).
        progress: ``progress(split, total)`` returns a per-sample callback (progress bars).

    Raises:
        PrepareError: a bad sample with ``on_bad_sample="error"``, or a duplicate key in a split.
    """
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"data.on_bad_sample={on_bad_sample!r}: choose error or skip")
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    rejected_counts: dict[str, int] = {}
    for split in splits:
        refs = source.list(split)
        seen: dict[str, str] = {}
        tick = progress(split, len(refs)) if progress else (lambda: None)
        counts[split] = rejected_counts[split] = 0
        for ref in refs:
            src = json.dumps(ref.paths, sort_keys=True)
            if ref.key in seen:
                raise PrepareError(
                    f"{_where(ref, 'rgb')}: key {ref.key!r} already used in split {split} by {seen[ref.key]}"
                )
            seen[ref.key] = _where(ref, "rgb")
            try:
                sample = source.load(ref)
                validate(sample, ref, source)
            except SampleError as err:
                if on_bad_sample == "error":
                    raise PrepareError(f"{err} (set data.on_bad_sample=skip to reject such samples)") from None
                rejected.append({"key": ref.key, "split": split, "source": src, "reason": str(err)})
                rejected_counts[split] += 1
                log.warning("rejected %s/%s: %s", split, ref.key, err)
                tick()
                continue
            h, w = sample["rgb"].shape[:2]
            rows.append(
                {
                    "key": ref.key,
                    "split": split,
                    "dataset": source.name,
                    "source": src,
                    "index": ref.index,
                    "height": h,
                    "width": w,
                    "targets": [t for t in TARGETS if t in sample],
                    "content_hash": content_hash(sample),
                }
            )
            counts[split] += 1
            tick()
    out.mkdir(parents=True, exist_ok=True)
    manifest, rejected_path = out / "manifest.parquet", out / "rejected.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    pq.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), rejected_path)
    return PrepareResult(manifest, rejected_path, counts, rejected_counts)


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Manifest rows as dicts (``source`` decoded to a dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the prepare stage first: `vista prepare`)")
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["source"] = json.loads(r["source"])
    return rows


def ref_of(row: dict[str, Any]) -> SampleRef:
    """The :class:`SampleRef` a manifest row was made from."""
    return SampleRef(row["key"], row["split"], dict(row["source"]), row["index"])
