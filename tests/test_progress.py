"""The progress display: what the user sees, and that training never waits for it."""

from __future__ import annotations

import io
import threading

from rich.console import Console
from rich.text import Text

from tuning.progress import RichReporter
from tuning.trial import TrialResult, TrialStatus


def test_epoch_line_is_shown_without_waiting_for_the_bar() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    reporter = RichReporter(total=3, console=console)
    with reporter:
        # The bar's refresh thread holds this lock while it draws; an epoch ending in the
        # training thread at that moment must not wait for it.
        with reporter._progress._lock:
            training = threading.Thread(target=reporter.epoch_ended,
                                        args=(2, 1, {"loss": 0.5, "accuracy": 0.75}))
            training.start()
            training.join(timeout=5)
            assert not training.is_alive()
        reporter._progress.refresh()
        assert "trial 2 · epoch 2 · loss 0.5, accuracy 0.75" in _plain(console)
        reporter.trial_ended(TrialResult(2, "run", TrialStatus.OK, {"units": 8}, loss=-0.75, seconds=1.0))
    assert "trial 2: loss -0.7500 (1.0 s) ★ best\n  units=8" in _plain(console)


def _plain(console: Console) -> str:
    return Text.from_ansi(console.file.getvalue()).plain
