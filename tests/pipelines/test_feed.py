"""The driver's line per epoch (pipelines/feed.py); the Ray run that prints them is in test_train_ray."""

from __future__ import annotations

from pipelines.feed import _ToQueue, epoch_line

ROW = {"epoch": 2, "train/loss": 1.23456, "train/samples_per_s": 25.25, "train/elapsed_s": 65.4}


def test_epoch_line_shows_the_metric_only_when_evaluated() -> None:
    line = epoch_line({**ROW, "val/seg/miou": 0.51234}, 3, "val/seg/miou")
    assert line == "[bold]epoch 2[/]/3  loss 1.2346  val/seg/miou [cyan]0.5123[/]  25.2 samples/s  0:01:05"
    assert "val/seg/miou" not in epoch_line(ROW, 3, "val/seg/miou")
    init = epoch_line({"epoch": 0, "val/seg/miou": 0.1}, 3, "val/seg/miou")
    assert init == "[bold]epoch 0[/]/3  at init  val/seg/miou [cyan]0.1000[/]"


def test_epoch_line_shows_skipped_bad_samples() -> None:
    """``data.on_bad_sample=skip``: the workers' warnings stay off the quiet console; the counts do not."""
    assert "skipped" not in epoch_line({**ROW, "train/skipped_samples": 0.0}, 3, "val/seg/miou")
    line = epoch_line({**ROW, "train/skipped_samples": 2.0, "val/skipped_samples": 1.0}, 3, "val/seg/miou")
    assert line.endswith("[yellow]skipped bad samples train 2, val 1[/]")


def test_epoch_line_with_a_time_budget_counts_time_not_epochs() -> None:
    """``train.time_budget_s`` ends the run; ``train.epochs`` is only a cap then (e.g. 1000)."""
    line = epoch_line(ROW, 1000, "val/seg/miou", budget_s=2000)
    assert line.startswith("[bold]epoch 2[/]  ") and "/1000" not in line and line.endswith("0:01:05/0:33:20")


def test_the_callback_sends_rank_0_and_never_fails_the_run() -> None:
    class Sink:
        def __init__(self, fail: bool = False) -> None:
            self.items, self.fail = [], fail

        def put_nowait(self, item: dict) -> None:
            if self.fail:
                raise ConnectionError("queue actor gone")
            self.items.append(item)

    sink = Sink()
    _ToQueue(sink).after_report(None, [{"epoch": 1, "rank": 0}, {"epoch": 1, "rank": 1}], None)
    assert sink.items == [{"epoch": 1, "rank": 0}]
    _ToQueue(Sink(fail=True)).after_report(None, [{"epoch": 1}], None)  # no exception
