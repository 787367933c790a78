"""The progress display: what the user sees, and that training never waits for it."""

from __future__ import annotations

import io
import threading

from rich.console import Console
from rich.text import Text

from tuning.objective import Objective
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
            training.join(timeout=60)  # a call waiting for the lock would wait for ever
            assert not training.is_alive(), "epoch_ended waited for the bar's lock"
        reporter._progress.refresh()
        assert "trial 2 · epoch 2 · loss 0.5, accuracy 0.75" in _plain(console)
        reporter.trial_ended(TrialResult(2, "run", TrialStatus.OK, {"units": 8}, loss=-0.75, seconds=1.0))
    assert "trial 2: accuracy 0.75 ▲ (1.0 s) ★ best\n  units=8" in _plain(console)


def _plain(console: Console) -> str:
    return Text.from_ansi(console.file.getvalue()).plain


def test_after_a_resume_best_knows_the_trials_before_and_long_values_are_cut_as_in_the_store() -> None:
    console = Console(file=io.StringIO(), width=10_000)
    reporter = RichReporter(total=5, done=3, console=console, best=-0.9)  # trials 1-3 ran before
    long = "x" * 7000
    reporter.trial_ended(TrialResult(4, "run", TrialStatus.OK, {"text": long}, loss=-0.5, seconds=1.0))
    reporter.trial_ended(TrialResult(5, "run", TrialStatus.OK, {"text": "y"}, loss=-0.95, seconds=1.0))
    lines = _plain(console).splitlines()
    assert lines[0].rstrip() == "trial 4: accuracy 0.5 ▲ (1.0 s)" and "★ best" in lines[2]
    assert lines[1].rstrip() == "  text=" + "x" * 6000  # MLflow keeps 6,000 characters of a param; so do we


def test_the_live_line_stays_one_line_at_80_columns() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    reporter = RichReporter(total=10, console=console)
    with reporter:
        reporter.epoch_ended(3, 4, {"loss": 0.123456, "accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.88})
        reporter._progress.refresh()
        shown = [line for line in _plain(console).split("\r") if "trials" in line][-1]
    assert "trial 3 · epoch 5" in shown and "\n" not in shown.strip("\n")


def test_a_loss_model_returned_itself_is_shown_as_a_loss() -> None:
    console = Console(file=io.StringIO(), width=200)
    reporter = RichReporter(total=2, console=console, objective=Objective.create("val_loss"))
    reporter.trial_ended(TrialResult(1, "run", TrialStatus.OK, {}, loss=0.25, seconds=1.0))
    reporter.trial_ended(TrialResult(2, "run", TrialStatus.OK, {}, loss=0.125, seconds=1.0, own_loss=True))
    assert "trial 1: val_loss 0.25 ▼" in _plain(console)
    assert "trial 2: loss 0.125 ▼ (model()'s)" in _plain(console)


def test_a_negated_zero_reads_zero() -> None:
    """``return {"loss": -f1, …}`` with f1 = 0, and an accuracy of 0, read 0, not -0."""
    assert Objective.create("accuracy").shown(0.0) == "accuracy 0 ▲"  # hyperopt's loss -0.0
    assert Objective.create("accuracy").shown(-0.0, own=True) == "loss 0 ▼ (model()'s)"
