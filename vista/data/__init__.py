"""Datasets -> validated manifest -> WebDataset shards -> training and evaluation readers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .sources.base import Source, get_source

if TYPE_CHECKING:
    from vista.config import DataParams


def open_source(data: DataParams) -> Source:
    """The dataset adapter selected by ``data.dataset`` / ``data.root``."""
    if data.dataset == "synthetic":
        h, w = data.image_size
        counts = {"train": data.num_train, "val": data.num_val}
        return get_source("synthetic", "", height=h, width=w, seed=data.seed, counts=counts)
    if not data.root:
        raise ValueError(f"data.root is empty: set it to the {data.dataset} folder (--set data.root=PATH)")
    root = Path(data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={data.root!r}: folder not found")
    return get_source(data.dataset, root)


def prepared_dir(data: DataParams) -> Path:
    return Path(data.prepared_dir) / data.dataset


def is_url(location: str) -> bool:
    return str(location).startswith(("http://", "https://"))


def shards_dir(data: DataParams) -> Path:
    """The local folder the shard stage writes (``data.shards_dir/<dataset>``)."""
    if is_url(data.shards_dir):
        raise ValueError(
            f"data.shards_dir={data.shards_dir!r}: the shard stage writes to a local folder; shard locally, "
            "upload the folder, then train with data.shards_dir set to its URL prefix"
        )
    return Path(data.shards_dir) / data.dataset


def shards_location(data: DataParams) -> str:
    """Where readers find ``<dataset>/shards.json``: an absolute local folder or an ``http(s)://`` prefix."""
    if is_url(data.shards_dir):
        return f"{data.shards_dir.rstrip('/')}/{data.dataset}"
    return str((Path(data.shards_dir) / data.dataset).resolve())
