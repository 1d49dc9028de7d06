"""Stage `prepare`: raw dataset -> data/prepared/<dataset>/{manifest,rejected}.parquet."""

from __future__ import annotations

import logging

from rich.console import Console

from vista.config import Params
from vista.data import open_source, prepared_dir
from vista.data.manifest import PrepareResult, prepare

from .progress import split_progress

log = logging.getLogger(__name__)


def run(params: Params, console: Console | None = None) -> PrepareResult:
    console = console or Console()
    d = params.data
    source = open_source(d)
    with split_progress(console, f"prepare {d.dataset}") as start:
        result = prepare(source, d.splits, prepared_dir(d), d.on_bad_sample, progress=start)
    for split in d.splits:
        msg = f"{split}: {result.counts[split]} samples, {result.rejected_counts[split]} rejected"
        console.print(msg)
        log.info(msg)
    if sum(result.rejected_counts.values()):
        console.print(f"[yellow]rejected samples and reasons: {result.rejected}[/]")
    console.print(f"manifest: {result.manifest}")
    return result
