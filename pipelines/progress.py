"""Rich progress bars for the stages (CLI process only, never inside Ray workers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def split_progress(console: Console, verb: str) -> Iterator[Callable[[str, int], Callable[[], None]]]:
    """Yields ``start(split, total) -> tick`` making one bar per split."""
    columns = (
        TextColumn(f"{verb} {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:

        def start(split: str, total: int) -> Callable[[], None]:
            task = progress.add_task(split, total=total)
            return lambda: progress.advance(task)

        yield start
