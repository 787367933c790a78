"""What the user sees while a study runs: a rich progress bar with the current epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from tuning.tracking import format_value
from tuning.trial import Objective, TrialResult, TrialStatus


class SilentReporter:
    """Reports nothing (tests, library use with ``progress=False``)."""

    def trial_started(self, number: int, run_id: str, params: dict[str, Any]) -> None:
        pass

    def epoch_ended(self, number: int, step: int, metrics: dict[str, float]) -> None:
        pass

    def trial_ended(self, result: TrialResult) -> None:
        pass


class RichReporter:
    """A progress bar over trials, the running epoch, and one line per finished trial."""

    def __init__(self, total: int, done: int = 0, console: Console | None = None, best: float | None = None,
                 objective: Objective | None = None):
        self.console = console or Console(stderr=True)
        self.best = best  # the best loss so far (of the trials before a resume)
        self.objective = objective or Objective()
        self._status = StatusColumn()
        self._progress = Progress(  # one line, even at 80 columns: the status is cut to fit
            TextColumn("[bold]trials"), BarColumn(bar_width=16), MofNCompleteColumn(), TimeElapsedColumn(),
            self._status, console=self.console, transient=True)
        self._task = self._progress.add_task("trials", total=total, completed=done)

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def trial_started(self, number: int, run_id: str, params: dict[str, Any]) -> None:
        self._status.text = f"trial {number}: starting"

    def epoch_ended(self, number: int, step: int, metrics: dict[str, float]) -> None:
        # Called in the training thread: only set the text, never wait for the bar's lock,
        # which its refresh thread holds while it draws.
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:4])
        self._status.text = f"trial {number} · epoch {step + 1} · {shown}"

    def trial_ended(self, result: TrialResult) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in result.params.items())
        if result.status is TrialStatus.OK and result.loss is not None:
            improved = self.best is None or result.loss < self.best
            self.best = result.loss if improved else self.best
            mark = "[green]★ best[/]" if improved else ""
            shown = self.objective.shown(result.loss, result.own_loss)
            line = f"trial {result.number}: {shown} ({result.seconds:.1f} s) {mark}".rstrip()
        else:
            line = f"trial {result.number}: [red]{result.status.value}[/] {result.error or ''}"
        self.console.print(f"{line}\n  [dim]{params}[/]")
        self._status.text = ""
        self._progress.update(self._task, advance=1)


class StatusColumn(ProgressColumn):
    """The running trial and epoch: a plain attribute, read each time the bar is drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def render(self, task: Task) -> Text:
        return Text(self.text, no_wrap=True, overflow="ellipsis")


def _short(value: Any) -> str:
    """A value as its param and tag hold it (long text cut as MLflow's limit cuts it), floats shortened."""
    return f"{value:.4g}" if isinstance(value, float) else format_value(value)
