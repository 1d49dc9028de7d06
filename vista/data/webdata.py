"""Readers of the shards: a training stream and an exactly-once evaluation pass.

Shards are read from a local folder or an ``http(s)://`` URL prefix (object storage), given as the folder
that holds ``shards.json``. Rank and worker come from ``torch.distributed`` (or the ``RANK``/``WORLD_SIZE``
environment) and the DataLoader worker info, as WebDataset reads them.

- Training: shards resampled with replacement per rank and worker (no rank runs dry, so DDP never waits
  on a finished rank), a shuffle buffer, paired transforms, fixed-size batches, and ``with_epoch`` on the
  loader so each rank yields the same number of batches per epoch.
- Evaluation: shards split by rank, then by worker: every sample exactly once across all of them. Fails
  fast when there are fewer shards than ranks × workers (some would get nothing and stall collectives).
- Integrity: every shard's bytes are hashed while they stream in and checked against the sha256 that
  ``shards.json`` records (a corrupt or swapped shard fails the read, naming it, instead of changing
  metrics); an unreadable tar or sample raises :class:`ShardReadError` naming the shard and the key.
- Bad samples: with ``on_bad_sample="skip"`` a sample that cannot be decoded or transformed is dropped
  with a warning naming shard and key, and counted: every batch then carries ``skipped`` (the names of
  the samples dropped since the previous batch), which :mod:`vista.engine` sums into
  ``split/skipped_samples``. Shard-level faults (a sha256 mismatch, an unreadable tar) still fail.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Literal

import webdataset as wds
from torch.utils.data import default_collate

from .batch import SKIPPED, to_tensors  # SKIPPED: the batch entry that lists the samples dropped by "skip"
from .codec import decode_sample
from .transforms import TrainTransform, normalize_rgb

TensorSample = dict[str, Any]
_SKIP_MARK = "__skipped__"
OnBadSample = Literal["error", "skip"]
log = logging.getLogger(__name__)


class ShardReadError(RuntimeError):
    """A shard or a sample in it cannot be trusted or decoded; the message names the shard (and key)."""


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def read_index(location: str) -> bytes:
    """The bytes of ``shards.json`` in a local folder or under a URL prefix."""
    location = str(location).rstrip("/")
    where = f"{location}/shards.json"
    try:
        if _is_url(location):
            with urllib.request.urlopen(where, timeout=30) as r:  # noqa: S310 (http(s) only)
                return r.read()
        with open(where, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: shard index not found (run the shard stage first: `vista shard`)") from None
    except OSError as err:
        raise OSError(f"{where}: cannot read the shard index ({err})") from None


def data_version(shards: str) -> str:
    """sha256 of ``shards.json``: names exactly the data a model saw."""
    return hashlib.sha256(read_index(shards)).hexdigest()


def load_index(location: str) -> dict[str, Any]:
    """``shards.json`` of a local folder or URL prefix."""
    where = f"{str(location).rstrip('/')}/shards.json"
    try:
        index = json.loads(read_index(location))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not a shard index ({err})") from None
    if not isinstance(index, dict) or not isinstance(index.get("splits"), dict):
        raise ValueError(f"{where}: not a shard index (no 'splits' mapping)")
    return index


def _shard_file(name: Any, where: str) -> str:
    """A shard's ``file`` entry: a plain ``*.tar`` name inside the shard folder, nothing that leaves it."""
    if not isinstance(name, str) or not name.endswith(".tar") or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"{where}: shard file entry {name!r} is not a plain .tar name inside the shard folder")
    return name


def shard_urls(location: str, split: str, index: dict[str, Any] | None = None) -> list[str]:
    """The shard files (paths or URLs) of ``split``."""
    index = index or load_index(location)
    if split not in index["splits"]:
        raise ValueError(f"{location}: no split {split!r} in shards.json (have {sorted(index['splits'])})")
    base = str(location).rstrip("/")
    return [f"{base}/{_shard_file(s.get('file'), f'{base}/shards.json')}" for s in index["splits"][split]["shards"]]


def shard_entries(location: str, split: str, index: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """``{shard url: (sha256, samples)}`` of ``split`` in shard order, checked, not trusted: every shard
    has a sha256 (its bytes are checked against it as they stream in) and a sample count (checked against
    what the tar holds), the counts add up to the split's, and the split is not empty."""
    where = f"{str(location).rstrip('/')}/shards.json"
    urls = shard_urls(location, split, index)
    entries = index["splits"][split]["shards"]
    out: dict[str, tuple[str, int]] = {}
    for url, entry in zip(urls, entries, strict=True):
        sha, n = entry.get("sha256"), entry.get("samples")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(
                f"{where}: shard {entry.get('file')!r} of split {split!r} has no valid sha256 ({sha!r}); every "
                "shard needs one (re-run `vista shard`)"
            )
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{where}: shard {entry.get('file')!r} of split {split!r} has samples={n!r}; need >= 1")
        out[url] = (sha, n)
    total, listed = index["splits"][split].get("samples"), sum(n for _, n in out.values())
    if not out or not listed:
        raise ValueError(f"{where}: split {split!r} has no samples (re-run `vista shard`)")
    if total != listed:
        raise ValueError(f"{where}: split {split!r} says {total!r} samples but its shards list {listed}")
    return out


class _HashingReader:
    """A read-only stream that hashes what passes through it (tarfile reads a stream sequentially)."""

    def __init__(self, stream: Any, url: str) -> None:
        self.stream, self.url, self.sha = stream, url, hashlib.sha256()

    def __repr__(self) -> str:  # WebDataset appends the stream to its error messages
        return self.url

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha.update(data)
        return data

    def hexdigest_to_end(self) -> str:
        while chunk := self.stream.read(1 << 20):  # the tar's end padding, which tarfile leaves unread
            self.sha.update(chunk)
        return self.sha.hexdigest()

    def close(self) -> None:
        self.stream.close()


def _verified_samples(
    entries: dict[str, tuple[str, int]],
) -> Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]]:
    """WebDataset's ``tarfile_to_samples`` with each shard's sha256 and sample count (``entries``:
    :func:`shard_entries`) checked at its end, and errors that name the shard (WebDataset's own attach the
    open stream, which cannot cross process boundaries)."""

    def files(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for source in wds.tariterators.url_opener(src):
            url = source["url"]
            reader = _HashingReader(source["stream"], url)
            keys, last = 0, None
            try:
                for member in wds.tariterators.tar_file_expander([{**source, "stream": reader}]):
                    # the end-of-shard marker ({}) names no file; samples group by base_plus_ext
                    key = wds.tariterators.base_plus_ext(member["fname"])[0] if "fname" in member else None
                    keys, last = keys + (key is not None and key != last), key if key is not None else last
                    yield member
                digest = reader.hexdigest_to_end()
            except (tarfile.TarError, OSError, EOFError) as err:
                raise ShardReadError(
                    f"{url}: unreadable shard ({type(err).__name__}: {err.args[0] if err.args else ''})"
                ) from None
            finally:
                reader.close()
            expected, count = entries[url]
            if digest != expected:
                raise ShardReadError(
                    f"{url}: sha256 {digest[:12]}… differs from shards.json's {expected[:12]}…: the shard changed "
                    "or is corrupt; re-run `vista shard` (or restore it)"
                )
            if keys != count:
                raise ShardReadError(f"{url}: holds {keys} samples, shards.json says {count}; re-run `vista shard`")

    def stage(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        return wds.tariterators.group_by_keys(files(src))

    return stage


def _where(raw: dict[str, Any]) -> str:
    return f"{raw.get('__url__', '?')}: sample {raw.get('__key__', '?')!r}"


def _decode(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return decode_sample(raw)
    except Exception as err:
        raise ShardReadError(f"{_where(raw)} cannot be decoded ({type(err).__name__}: {err})") from None


def _guarded(fn: Callable[[dict[str, Any]], TensorSample], on_bad_sample: OnBadSample) -> Callable[..., TensorSample]:
    """``fn`` over a raw sample; a failure names shard and key, and with ``skip`` becomes a marker that
    :func:`_skip_bad` drops and counts (a warning names the sample)."""
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"data.on_bad_sample={on_bad_sample!r}: choose error or skip")

    def guarded(raw: dict[str, Any]) -> TensorSample:
        try:
            return fn(raw)
        except ShardReadError as err:
            error = err
        except Exception as err:  # a transform that cannot apply to this sample (e.g. mismatched sizes)
            error = ShardReadError(f"{_where(raw)} cannot be used ({type(err).__name__}: {err})")
        if on_bad_sample == "error":
            raise error
        log.warning("skipping a bad sample (data.on_bad_sample=skip): %s", error)
        return {_SKIP_MARK: [_where(raw)]}

    return guarded


def _skip_bad(src: Iterator[TensorSample]) -> Iterator[TensorSample]:
    """Drops the markers of skipped samples; their names ride on the next good sample (or, at the end of
    the stream, on a sample of their own that holds nothing else), so the count reaches the batches."""
    pending: list[str] = []
    for sample in src:
        if _SKIP_MARK in sample and "rgb" not in sample:
            pending += sample[_SKIP_MARK]
            continue
        yield {**sample, _SKIP_MARK: pending}
        pending = []
    if pending:
        yield {_SKIP_MARK: pending}


def _collate_counting(samples: list[TensorSample]) -> TensorSample:
    """Collate the good samples; ``skipped`` lists the samples dropped before them (a batch of dropped
    samples only holds ``skipped``)."""
    skipped = [name for s in samples for name in s.get(_SKIP_MARK, ())]
    good = [{k: v for k, v in s.items() if k != _SKIP_MARK} for s in samples if "rgb" in s]
    return {**(default_collate(good) if good else {}), SKIPPED: skipped}


def distributed_info() -> tuple[int, int]:
    """(rank, world size), as WebDataset sees them."""
    rank, world, _, _ = wds.utils.pytorch_worker_info()
    return rank, world


def check_shard_count(n_shards: int, world_size: int, num_workers: int, split: str, location: str) -> None:
    """Every rank × worker must get at least one shard, or evaluation hangs or drops samples."""
    readers = world_size * max(1, num_workers)
    if n_shards < readers:
        raise ValueError(
            f"{location}: split {split!r} has {n_shards} shard(s) but {world_size} rank(s) × {max(1, num_workers)} "
            f"loader worker(s) = {readers} readers; every reader needs a shard. Re-shard with a smaller "
            f"shard.max_samples, or use fewer loader workers."
        )


def _seeded_shuffle(bufsize: int, seed: int) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """A shuffle buffer whose RNG derives from (seed, rank, loader worker, pass), so runs are repeatable
    and every reader shuffles differently (WebDataset's default seeds from the pid and the clock)."""
    passes = [0]

    def stage(src: Iterator[Any]) -> Iterator[Any]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(hash((seed, rank, worker, passes[0])))
        passes[0] += 1
        yield from wds.shuffle(bufsize, initial=min(100, bufsize), rng=rng)(src)

    return stage


def _collate(samples: list[TensorSample]) -> TensorSample:
    return default_collate(samples)


def _strip(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k != "meta"}


def _train_map(transform: TrainTransform, on_bad_sample: OnBadSample = "error") -> Callable[..., TensorSample]:
    def fn(raw: dict[str, Any]) -> TensorSample:
        s = _decode(raw)
        t = normalize_rgb(transform(to_tensors(s, normalize=False)))
        return {"key": s["key"], **t}

    return _guarded(fn, on_bad_sample)


def _eval_sample(raw: dict[str, Any]) -> TensorSample:
    s = _decode(raw)
    return {"key": s["key"], **to_tensors(_strip(s))}


def _batching(batch_size: int, partial: bool, on_bad_sample: OnBadSample) -> list[Callable[..., Any]]:
    """The batching stages: plain, or (``skip``) dropping and counting bad samples."""
    if on_bad_sample == "skip":
        return [_skip_bad, wds.batched(batch_size, collation_fn=_collate_counting, partial=partial)]
    return [wds.batched(batch_size, collation_fn=_collate, partial=partial)]


def train_loader(
    location: str,
    batch_size: int,
    transform: TrainTransform | None = None,
    split: str = "train",
    num_workers: int = 0,
    shuffle_buffer: int = 256,
    seed: int = 0,
    samples_per_epoch: int | None = None,
    on_bad_sample: OnBadSample = "error",
    pin_memory: bool = False,
    index: dict[str, Any] | None = None,
) -> wds.WebLoader:
    """An endless, resampled training stream cut into epochs of equal length on every rank.

    Args:
        location: folder or URL prefix holding ``shards.json``.
        samples_per_epoch: total over all ranks; default = the split's sample count.
        pin_memory: batches in page-locked memory (for non-blocking copies to a CUDA device).
        on_bad_sample: ``error`` (a bad sample fails the run, naming shard and key) or ``skip`` (dropped,
            counted in each batch's ``skipped``; the endless stream keeps every batch full).
        index: ``shards.json`` when the caller has read it (:func:`load_index`).

    Returns:
        A loader yielding batches ``{"key": [...], "rgb": (B, 3, H, W), "depth"?, "seg"?, "normal"?}``;
        each epoch has ``ceil(samples_per_epoch / (world_size · batch_size))`` batches per rank.
    """
    index = index if index is not None else load_index(location)
    entries = shard_entries(location, split, index)
    _, world = distributed_info()
    total = samples_per_epoch or index["splits"][split]["samples"]
    transform = transform or TrainTransform()
    pipeline = wds.DataPipeline(
        wds.ResampledShards(list(entries), seed=seed, deterministic=True),
        _verified_samples(entries),
        _seeded_shuffle(shuffle_buffer, seed) if shuffle_buffer > 1 else wds.filters.identity,
        wds.map(_train_map(transform, on_bad_sample)),
        *_batching(batch_size, False, on_bad_sample),
    )
    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
    return loader.with_epoch(math.ceil(total / (world * batch_size)))


def eval_loader(
    location: str,
    split: str,
    batch_size: int,
    num_workers: int = 0,
    on_bad_sample: OnBadSample = "error",
    pin_memory: bool = False,
    index: dict[str, Any] | None = None,
) -> wds.WebLoader:
    """One pass over ``split``: every sample exactly once across all ranks and workers.

    With ``on_bad_sample="skip"`` bad samples are dropped and listed in the batches' ``skipped`` (a batch
    may then be short, or hold only ``skipped``). ``index``: ``shards.json`` when the caller has read it.

    Raises:
        ValueError: fewer shards than ranks × workers.
    """
    entries = shard_entries(location, split, index if index is not None else load_index(location))
    _, world = distributed_info()
    check_shard_count(len(entries), world, num_workers, split, location)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(entries)),
        wds.split_by_node,
        wds.split_by_worker,
        _verified_samples(entries),
        wds.map(_guarded(_eval_sample, on_bad_sample)),
        *_batching(batch_size, True, on_bad_sample),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)


def iter_samples(location: str, split: str) -> Iterator[dict[str, Any]]:
    """Decoded numpy samples of ``split`` in shard order (single process; for checks and tools)."""
    entries = shard_entries(location, split, load_index(location))
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(entries)),
        _verified_samples(entries),
        wds.map(_decode),
    )
    yield from pipeline
