"""Stage `shard`: manifest -> data/shards/<dataset>/<split>-NNNNNN.tar + shards.json."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from vista.config import Params
from vista.data import open_source, prepared_dir, shards_dir
from vista.data.shards import write_shards

from .progress import split_progress


def run(params: Params, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    d, s = params.data, params.shard
    with split_progress(console, f"shard {d.dataset}") as start:
        index = write_shards(
            open_source(d),
            prepared_dir(d) / "manifest.parquet",
            shards_dir(d),
            max_samples=s.max_samples,
            max_bytes=s.max_bytes,
            min_shards=s.min_shards,
            seed=s.seed,
            rgb_format=s.rgb_format,
            jpeg_quality=s.jpeg_quality,
            progress=start,
        )
    for split, info in index["splits"].items():
        console.print(
            f"{split}: {info['samples']} samples in {len(info['shards'])} shards, {info['bytes'] / 2**20:.1f} MiB"
        )
    console.print(f"index: {shards_dir(d) / 'shards.json'}")
    return index
