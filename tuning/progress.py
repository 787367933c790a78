"""What the user sees while a study runs: a rich progress bar with the current epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuning.trial import TrialResult, TrialStatus


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

    def __init__(self, total: int, done: int = 0, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.best: float | None = None
        self._progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), console=self.console, transient=True)
        self._task = self._progress.add_task("trials", total=total, completed=done, status="")

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def trial_started(self, number: int, run_id: str, params: dict[str, Any]) -> None:
        self._progress.update(self._task, status=f"trial {number}: starting")

    def epoch_ended(self, number: int, step: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:4])
        self._progress.update(self._task, status=f"trial {number} · epoch {step + 1} · {shown}")

    def trial_ended(self, result: TrialResult) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in result.params.items())
        if result.status is TrialStatus.OK and result.loss is not None:
            improved = self.best is None or result.loss < self.best
            self.best = result.loss if improved else self.best
            mark = "[green]★ best[/]" if improved else ""
            line = f"trial {result.number}: loss {result.loss:.4f} ({result.seconds:.1f} s) {mark}"
        else:
            line = f"trial {result.number}: [red]{result.status.value}[/] {result.error or ''}"
        self.console.print(f"{line}\n  [dim]{params}[/]")
        self._progress.update(self._task, advance=1, status="")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
