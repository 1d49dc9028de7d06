"""One console line per epoch of a Ray Train run, printed by the driver (the CLI process).

Ray Train V2 runs report callbacks in its controller actor, not in the driver, and ``trainer.fit()`` blocks
the driver until the run ends. So a callback puts rank 0's report of every epoch into a Ray queue, and a
thread of the driver prints it; the thread is drained and joined before ``fit`` returns (no line is lost).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
from typing import Any

from ray.train import UserCallback
from rich.console import Console

log = logging.getLogger(__name__)


def epoch_line(row: dict[str, Any], epochs: int, metric: str, budget_s: float | None = None) -> str:
    """``epoch 2/3  loss 6.0757  val/seg/miou 0.0680  9.4 samples/s  0:00:05``: the selection ``metric`` only
    when the epoch was evaluated; epoch 0 is the evaluation at initialisation. With a time budget the
    epochs are only a cap, so the elapsed time is shown against the budget instead."""

    def clock(seconds: float) -> str:
        return str(datetime.timedelta(seconds=round(seconds)))

    epoch = row.get("epoch", "?")
    parts = [f"[bold]epoch {epoch}[/]" + ("" if budget_s else f"/{epochs}")]
    if epoch == 0:
        parts.append("at init")
    if "train/loss" in row:
        parts.append(f"loss {row['train/loss']:.4f}")
    if metric in row:
        parts.append(f"{metric} [cyan]{row[metric]:.4f}[/]")
    if "train/samples_per_s" in row:
        parts.append(f"{row['train/samples_per_s']:.1f} samples/s")
    if "train/elapsed_s" in row and epoch != 0:
        parts.append(clock(row["train/elapsed_s"]) + (f"/{clock(budget_s)}" if budget_s else ""))
    skipped = {k.split("/")[0]: int(v) for k, v in row.items() if k.endswith("/skipped_samples") and v}
    if skipped:  # data.on_bad_sample=skip: the workers' warnings name them (--verbose)
        parts.append("[yellow]skipped bad samples " + ", ".join(f"{s} {n}" for s, n in skipped.items()) + "[/]")
    return "  ".join(parts)


class _ToQueue(UserCallback):
    """Runs in the Ray Train controller: hands rank 0's metrics of every report to the driver's queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        try:
            self.queue.put_nowait(dict(metrics[0]))
        except Exception as err:  # a display only: it never fails the run
            log.debug("epoch feed: %s", err)


class EpochFeed:
    """Context manager around ``trainer.fit()``: pass :attr:`callback` to the ``RunConfig``; every report
    becomes a line on ``console`` (:func:`epoch_line`). Needs Ray initialised."""

    def __init__(self, console: Console, epochs: int, metric: str, budget_s: float | None = None) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.console, self.epochs, self.metric, self.budget_s = console, epochs, metric, budget_s
        # no CPU taken from the training workers; on the driver's node (like Ray Train's controller), so a
        # worker node that fails does not take the feed with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.callback = _ToQueue(self._queue)
        self._thread = threading.Thread(target=self._print, name="epoch-feed", daemon=True)

    def _print(self) -> None:
        while True:
            try:
                row = self._queue.get()
            except Exception as err:  # the queue is gone (Ray shut down): nothing more to print
                log.debug("epoch feed: %s", err)
                return
            if row is None:
                return
            self.console.print(epoch_line(row, self.epochs, self.metric, self.budget_s), highlight=False)

    def __enter__(self) -> EpochFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._queue.put(None)  # after every report of the run: the controller put them synchronously
            self._thread.join(timeout=30)
        except Exception as err:  # never hides how fit() ended
            log.debug("epoch feed: %s", err)
        finally:
            with contextlib.suppress(Exception):
                self._queue.shutdown(force=True)
