"""A study's own MLflow run, from its start (or resume) to its end.

The search (:mod:`tuning.study`) and population based training (:mod:`tuning.population`)
both hold their study run in a :class:`StudyRun`, which ends it as ``mlflow.ActiveRun``
ends a run: FINISHED, KILLED when Ctrl-C or SIGTERM left the block, FAILED when an error
did. On the way out the run gets the study's summary (best trial, counts, why it stopped)
and the report.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hyperopt import Trials

from tuning import history, signals
from tuning.distributions import Distribution
from tuning.errors import ConfigurationError, TrackingError
from tuning.lease import Lease
from tuning.objective import Objective
from tuning.recipe import Recipe
from tuning.settings import GRID, StudyConfig
from tuning.stopping import StopReason
from tuning.tracking import LOSS_METRIC, SOURCE_FUNCTION_TAG, Tracker
from tuning.trial import TrialResult, TrialStatus, settle

__all__ = ["StudyResult", "StudyRun"]  # the rest is this package's own

_log = logging.getLogger("tuning")


@dataclass(frozen=True)
class StudyResult:
    """A finished study: where it is tracked, its trials and the best one."""

    tracking_uri: str
    experiment_id: str
    experiment: str
    run_id: str
    seed: int
    trials: tuple[TrialResult, ...]
    space: dict[str, Distribution]
    stop_reason: StopReason | None = None  # None: the study could not be closed (store away)
    stop_detail: str = ""
    objective: Objective = Objective()

    @property
    def best(self) -> TrialResult | None:
        ok = [t for t in self.trials if t.status is TrialStatus.OK and t.loss is not None]
        return min(ok, key=lambda t: t.loss) if ok else None  # type: ignore[arg-type, return-value]

    @property
    def failed(self) -> tuple[TrialResult, ...]:
        """Trials that failed or were killed (pruned trials are neither)."""
        return tuple(t for t in self.trials if t.status in (TrialStatus.FAILED, TrialStatus.KILLED))

    @property
    def pruned(self) -> tuple[TrialResult, ...]:
        return tuple(t for t in self.trials if t.status is TrialStatus.PRUNED)


class StudyRun:
    """The study run while the study goes on; ``with`` it, the run ends as the block ends.

    Inside the block the lease (if any) keeps the run held, and what is alive is frozen out
    of the garbage collector's sight. On the way out ``conclude(status)`` makes the
    :class:`StudyResult` from what the study holds, and the history ``snapshot`` (if any)
    is written unless the study finished; ``status`` is ``FINISHED``, ``KILLED`` (Ctrl-C,
    SIGTERM), ``FAILED`` (an error), or ``""`` when the tracking store itself is away, and
    then nothing more is written (``--resume`` closes the run). The result is
    ``self.result``; a study whose every trial failed ends FAILED.
    """

    def __init__(self, tracker: Tracker, run_id: str, conclude: Callable[[str], StudyResult],
                 lease: Lease | None = None, snapshot: history.Snapshot | None = None):
        self.tracker = tracker
        self.run_id = run_id
        self.result: StudyResult | None = None
        self._conclude = conclude
        self._lease = lease
        self._snapshot = snapshot

    def __enter__(self) -> StudyRun:
        if self._lease is not None:
            self._lease.start()
        settle()  # until the study ends
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            status = "FINISHED"
        elif issubclass(kind, KeyboardInterrupt):
            signals.handled()
            status = "KILLED"
        else:
            status = "" if issubclass(kind, TrackingError) else "FAILED"
        if self._lease is not None:
            self._lease.close()
        gc.unfreeze()
        self.result = self._conclude(status)
        if self._snapshot is not None and status and _ending(self.result, status) != "FINISHED":
            self._snapshot.write()  # for --resume, which continues only a study that did not finish
        if status:
            _finish(self.tracker, self.result, status)


@dataclass(frozen=True)
class Opened:
    """A study run ready to go on: its id, the config it runs with, its past, its lease."""

    run_id: str
    config: StudyConfig
    past: history.History
    lease: Lease


def open_study(tracker: Tracker, experiment_id: str, recipe: Recipe, config: StudyConfig,
               distributions: dict[str, Distribution], trials: Trials) -> Opened:
    """A new study run, or with ``resume`` the newest unfinished one, its trials rebuilt
    into ``trials``; held by this process (see :mod:`tuning.lease`)."""
    previous = history.unfinished_study(tracker, experiment_id, recipe_key(recipe)) if config.resume else None
    if config.resume and previous is None:
        _log.warning("nothing to resume: no unfinished study of %s in experiment %r; a new one starts",
                     recipe_key(recipe), config.experiment)
    if previous is not None:
        config = config.resumed(previous.data.params)
        run_id = previous.info.run_id
        _check_same_space(tracker, run_id, recipe, distributions)
        lease = Lease.take(tracker, previous, config.force)  # before anything of it is touched
        tracker.set_status(run_id, "RUNNING")
        past = history.rebuild(tracker, experiment_id, run_id, trials)
        resumes = int(previous.data.tags.get("tuning.resumes", "0")) + 1
        tracker.log(run_id, tags={"tuning.resumes": resumes})
        return Opened(run_id, config, past, lease)
    params: dict[str, Any] = {"algo": config.algo_name, "seed": config.seed,
                              "objective": config.objective.metric, "mode": config.objective.mode}
    if config.algo == GRID:
        params["fraction"] = config.fraction
    if config.cluster is not None:
        params["parallelism"] = config.cluster.parallelism
    lease = Lease(tracker)  # who holds it, on the run from its start: a --resume elsewhere refuses
    run_id = start_study_run(tracker, experiment_id, recipe, distributions, params, lease.tags)
    return Opened(run_id, config, history.History([], 0, ()), lease.of(run_id))


def start_study_run(tracker: Tracker, experiment_id: str, recipe: Recipe,
                    distributions: dict[str, Distribution], params: dict[str, Any],
                    tags: dict[str, str] | None = None) -> str:
    """A new study run: the recipe and ``params`` as params, the space, the recipe's source."""
    key = recipe_key(recipe)
    # The model function's name: with the file, tuning.load_best finds the recipe's own
    # losses, layers and metrics when a model is reloaded in another process.
    run_id = tracker.start_run(experiment_id, f"study-{time.strftime('%Y%m%d-%H%M%S')}", "study",
                               tracker.outer_run(experiment_id),
                               tags={"tuning.recipe": key, SOURCE_FUNCTION_TAG: recipe.template.function,
                                     **(tags or {})})
    try:
        tracker.log(run_id, params={"recipe": key, **params})
        tracker.log_json(run_id, _describe(recipe, distributions), "space.json")
        tracker.log_text(run_id, recipe.template.source, f"recipe/{_source_name(recipe)}")
    except Exception as error:  # e.g. an artifact location it cannot write: no run left RUNNING
        if not isinstance(error, TrackingError):  # (a store that is away takes no more writes)
            with suppress(TrackingError):
                tracker.log(run_id, tags={"tuning.error": str(error)})
            with suppress(TrackingError):
                tracker.end_run(run_id, "FAILED")
        raise
    return run_id


# Kinds whose values are positions among options (or counts): any change changes what past values mean.
_OPTION_KINDS = ("choice", "pchoice", "randint")


def _check_same_space(tracker: Tracker, run_id: str, recipe: Recipe,
                      distributions: dict[str, Distribution]) -> None:
    """A resumed study reads its trials' values as values of the recipe's markers: they may
    not have come or gone, changed kind, or (a choice) changed its number of options since
    it started; a range may change. (Options are compared by count: their text holds
    addresses, ``<function relu at 0x…>``, that differ from process to process.)"""
    started = tracker.read_json(run_id, "space.json") or {}
    if not started:
        return
    differences = [f"{name} added: {d.describe()}" for name, d in distributions.items()
                   if name not in started]
    differences += [f"{name} removed (was {entry['distribution']})" for name, entry in started.items()
                    if name not in distributions]
    for name in distributions.keys() & started.keys():
        now, was = distributions[name], started[name]
        options = len(now.grid or ()) != len(was.get("values") or ())
        if now.kind != was["distribution"].split("(")[0] or (now.kind in _OPTION_KINDS and options):
            differences.append(f"{name}: {was['distribution']} became {now.describe()}")
    if differences:
        raise ConfigurationError(
            f"{recipe.template.filename}: the search space changed since study {run_id} started "
            f"({'; '.join(sorted(differences))}), so its trials cannot be resumed with it: undo the "
            "change to resume, or run without --resume to start a new study")


def recipe_key(recipe: Recipe) -> str:
    """How a study names its recipe: the absolute path of its file."""
    name = recipe.template.filename
    return name if name.startswith("<") else str(Path(name).resolve())


def _ending(result: StudyResult, status: str) -> str:
    """The status the study run ends with: one that finished without a usable trial ends FAILED."""
    return "FAILED" if status == "FINISHED" and result.best is None else status


def _finish(tracker: Tracker, result: StudyResult, status: str) -> None:
    best, ending = result.best, _ending(result, status)
    summary: dict[str, float] = {"trials_ok": len(result.trials) - len(result.failed) - len(result.pruned),
                                 "trials_failed": len(result.failed), "trials_pruned": len(result.pruned)}
    tags: dict[str, Any] = {}
    if best is not None:
        summary[f"best_{LOSS_METRIC}"] = best.loss  # type: ignore[assignment]
        tags = {"tuning.best_run_id": best.run_id, "tuning.best_trial": best.number,
                **{f"best.{k}": v for k, v in best.params.items()}}
    elif ending != status:  # it finished, and every trial failed
        tags["tuning.error"] = f"all {len(result.trials)} trials failed"
    tags.update({"tuning.stop_reason": result.stop_reason, "tuning.stop_detail": result.stop_detail})
    tracker.log(result.run_id, metrics=summary, tags=tags)
    if ending != "KILLED":  # whoever pressed Ctrl-C waits for no plots; a resumed study draws them
        from tuning.report import attach_report  # never raises: a plot must not fail a search

        try:
            signals.check()
            attach_report(result, tracker)
        except KeyboardInterrupt:  # --resume draws it: every trial is done, the budget spent
            tracker.log(result.run_id, tags={"tuning.stop_reason": StopReason.INTERRUPTED,
                                             "tuning.stop_detail": "interrupted while drawing the report"})
            tracker.end_run(result.run_id, "KILLED")
            raise
    tracker.end_run(result.run_id, ending)


def _describe(recipe: Recipe, distributions: dict[str, Distribution]) -> dict[str, Any]:
    lines = {m.name: m.line for m in recipe.template.markers}
    return {name: {"distribution": d.describe(), "line": lines[name], "integer": d.is_integer,
                   "values": d.grid} for name, d in distributions.items()}


def _source_name(recipe: Recipe) -> str:
    name = Path(recipe.template.filename).name
    return name if name.endswith(".py") and not name.startswith("<") else "model.py"
