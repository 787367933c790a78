"""A study's history, rebuilt from the tracking server alone (for ``--resume``).

Each trial run carries its raw hyperopt values (``tuning.hyperopt_vals``), its loss and
its status, which is all hyperopt needs to continue informed: no pickle beside the
server. Reading thousands of runs back is slow, though (MLflow builds every run's params,
tags and metrics: ~0.9 ms a run on sqlite), so the study also keeps a compact copy of what
resume reads, :class:`Snapshot`, on its study run (``history/trials.json.gz``): written every
``SNAPSHOT_EVERY`` trials and as the study ends. ``--resume`` reads that file and only the
runs started after it (and re-reads the few whose model a ``best:N`` policy may since have
deleted); a study without one, or whose file cannot be read, is read run by run.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperopt import Trials, base
from hyperopt.fmin import generate_trial
from mlflow.entities import Run

from tuning.errors import TrackingError
from tuning.tracking import (
    INTERRUPTED_TAG,
    KIND_TAG,
    LOSS_METRIC,
    MODEL_DELETED_TAG,
    OWN_LOSS_TAG,
    RETRY_TAG,
    STRATEGY_TAG,
    Tracker,
    format_value,
)
from tuning.trial import TrialResult, TrialStatus

_STATUS = {"FINISHED": TrialStatus.OK, "FAILED": TrialStatus.FAILED, "KILLED": TrialStatus.KILLED}
# The status a trial's run ends with (killed: stopped by a limit; pruned: tagged so as well)
_RUN_STATUS = {status: name for name, status in _STATUS.items()} | {TrialStatus.PRUNED: "KILLED"}
SNAPSHOT_FOLDER, SNAPSHOT_FILE = "history", "trials.json.gz"  # on the study run
SNAPSHOT_EVERY = 1000  # trials between two snapshots (a study that dies loses at most these to a slow read)
_FORMAT = 1
_log = logging.getLogger("tuning")


def unfinished_study(tracker: Tracker, experiment_id: str, recipe: str) -> Run | None:
    """The newest hyperopt study run of ``recipe`` in the experiment that did not finish."""
    query = (f"tags.`{KIND_TAG}` = 'study' and tags.`tuning.recipe` = '{_quoted(recipe)}' "
             "and attributes.status != 'FINISHED'")
    found = tracker.runs(experiment_id, query, limit=20, order_by=["attributes.start_time DESC"])
    # A population based training study has no hyperopt trials to continue.
    return next((run for run in found if run.data.tags.get(STRATEGY_TAG) != "pbt"), None)


@dataclass(frozen=True)
class Record:
    """One trial run, as much of it as resume reads (what a snapshot keeps per trial)."""

    run_id: str
    number: int
    status: str  # MLflow's: FINISHED, FAILED, KILLED or RUNNING
    raw: dict[str, Any]  # hyperopt's values
    params: dict[str, str]  # as MLflow holds them
    loss: float | None = None
    error: str | None = None
    retry_of: str | None = None  # the run id of the interrupted trial this one reruns
    interrupted: bool = False
    pruned: bool = False
    model_logged: bool = False
    own_loss: bool = False

    @classmethod
    def of_run(cls, run: Run) -> Record:
        tags = run.data.tags
        return cls(run.info.run_id, int(tags["tuning.trial"]), run.info.status,
                   json.loads(tags.get("tuning.hyperopt_vals", "{}")), dict(run.data.params),
                   run.data.metrics.get(LOSS_METRIC), tags.get("tuning.error"), tags.get(RETRY_TAG),
                   tags.get(INTERRUPTED_TAG) == "true", tags.get("tuning.pruned") == "true",
                   bool(run.outputs and run.outputs.model_outputs) and MODEL_DELETED_TAG not in tags,
                   tags.get(OWN_LOSS_TAG) == "true")

    @classmethod
    def of_result(cls, result: TrialResult, raw: dict[str, Any]) -> Record:
        """What the run of ``result`` holds once it ended (a trial interrupted has no result)."""
        return cls(result.run_id, result.number, _RUN_STATUS[result.status],
                   json.loads(json.dumps(raw, default=float)),  # as the run's tag holds them
                   {k: format_value(v) for k, v in result.params.items()}, result.loss, result.error,
                   result.retry_of, pruned=result.status is TrialStatus.PRUNED,
                   model_logged=result.model_logged, own_loss=result.own_loss)

    def result(self) -> TrialResult:
        status = _STATUS.get(self.status, TrialStatus.KILLED)
        if status is TrialStatus.KILLED and self.pruned:
            status = TrialStatus.PRUNED
        loss = self.loss if status in (TrialStatus.OK, TrialStatus.PRUNED) else None
        if status is TrialStatus.OK and loss is None:  # finished, yet no loss was logged: unusable
            status = TrialStatus.FAILED
        return TrialResult(self.number, self.run_id, status, {k: _typed(v) for k, v in self.params.items()},
                           loss, self.error, model_logged=self.model_logged, own_loss=self.own_loss,
                           retry_of=self.retry_of)


@dataclass(frozen=True)
class History:
    """A study's past, as ``--resume`` continues it."""

    results: list[TrialResult]  # the trials that ran to an end: they count toward max_evals
    proposals: int  # configurations proposed so far (a rerun is none): the random draws made
    retries: tuple[tuple[int, str], ...]  # (new trial number, run id of the interrupted trial it reruns)
    records: tuple[Record, ...] = ()  # every trial run, ended
    runs_read: int = 0  # how many runs were read from the store (the rest came from the snapshot)


def rebuild(tracker: Tracker, experiment_id: str, study_run_id: str, trials: Trials) -> History:
    """Fill ``trials`` with the study's past: every trial that ran to an end (finished,
    failed, pruned, stopped by a limit) as done, and each interrupted one's configuration
    queued to run again first, under a new trial number.

    A run still RUNNING belongs to a process that died (kill -9, power cut): it ends
    KILLED and counts as interrupted.
    """
    records, runs_read = _read(tracker, experiment_id, study_run_id)
    for i, record in enumerate(records):
        if record.status == "RUNNING":
            reason = "the process running it died"
            _end(tracker, record.run_id, reason)
            records[i] = dataclasses.replace(record, status="KILLED", interrupted=True, error=reason)
    rerun = {record.retry_of for record in records}
    results, docs, interrupted = [], [], []
    for record in records:
        if record.status == "KILLED" and record.interrupted:
            if record.run_id not in rerun:
                interrupted.append((record.number, record.run_id, record.raw))
            continue
        result = record.result()
        results.append(result)
        docs.append(_hyperopt_doc(result, record.raw))
    results.sort(key=lambda r: r.number)
    docs.sort(key=lambda d: d["tid"])
    trials.insert_trial_docs(docs)
    trials.refresh()
    trials._ids.update(record.number - 1 for record in records)  # numbers stay unique
    retries = []
    for _, run_id, raw in sorted(interrupted, key=lambda item: item[0]):
        (tid,) = trials.new_trial_ids(1)
        trials.insert_trial_docs([generate_trial(tid, raw)])  # state NEW: run before any proposal
        retries.append((tid + 1, run_id))
    trials.refresh()
    return History(results, sum(record.retry_of is None for record in records), tuple(retries),
                   tuple(records), runs_read)


def _read(tracker: Tracker, experiment_id: str, study_run_id: str) -> tuple[list[Record], int]:
    """Every trial run of the study, from its snapshot and the runs newer than it (or from
    the runs alone); and how many runs were read."""
    snapshot = _load(tracker, study_run_id)
    if snapshot is None:
        runs = [Record.of_run(run) for run in tracker.trial_runs(experiment_id, study_run_id)]
        return runs, len(runs)
    known = {record.run_id: record for record in snapshot.records}
    newer = [Record.of_run(run) for run in tracker.trial_runs(
        experiment_id, study_run_id, f"attributes.start_time >= {int(snapshot.horizon * 1000)}")]
    stale = []  # a best:N study deletes older trials' models as better ones arrive: maybe since
    if snapshot.keep_models.startswith("best:"):
        holders = [r.run_id for r in snapshot.records if r.model_logged]
        for start in range(0, len(holders), 100):
            ids = ", ".join(f"'{run_id}'" for run_id in holders[start:start + 100])
            stale += [Record.of_run(run) for run in tracker.trial_runs(
                experiment_id, study_run_id, f"attributes.run_id IN ({ids})")]
    known.update((record.run_id, record) for record in stale + newer)
    return list(known.values()), len(newer) + len(stale)


@dataclass(frozen=True)
class _Stored:
    """A snapshot as read back."""

    records: list[Record]
    horizon: float  # every run it does not hold started at this time or later (seconds)
    keep_models: str  # the policy of the study that wrote it


def _load(tracker: Tracker, study_run_id: str) -> _Stored | None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = tracker.download(study_run_id, f"{SNAPSHOT_FOLDER}/{SNAPSHOT_FILE}", folder)
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - no snapshot (an older study, or one that never wrote it)
            return None
        try:
            with gzip.open(path, "rt", encoding="utf-8") as file:
                stored = json.load(file)
            if stored.get("format") != _FORMAT:
                raise ValueError(f"format {stored.get('format')!r}")
            return _Stored([Record(**fields) for fields in stored["records"]], float(stored["horizon"]),
                           str(stored["keep_models"]))
        except Exception as error:  # noqa: BLE001 - cut short or from elsewhere: read the runs instead
            _log.warning("the study's history snapshot cannot be read (%s): reading every trial run", error)
            return None


class Snapshot:
    """The study's own copy of its trial runs (as :class:`Record`), written to its study run.

    It learns a trial's raw values as it starts (:meth:`started`) and its record as it ends
    (:meth:`ended`). Runs it never sees end (a trial interrupted under a stopping study, the
    run a lost Spark executor left behind) are left to the store: the snapshot's horizon
    stays at the oldest start among them, and ``--resume`` reads every run from there on.
    """

    def __init__(self, tracker: Tracker, study_run_id: str, past: History, keep_models: str,
                 clock_margin: float):
        self.tracker, self.study_run_id = tracker, study_run_id
        self.keep_models, self.clock_margin = keep_models, clock_margin
        self.records = {record.run_id: record for record in past.records}
        self.started_at: dict[int, tuple[float, dict[str, Any]]] = {}  # number -> (start, raw)
        self.unseen: list[float] = []  # when the trials started whose runs it holds no record of
        self.reruns = dict(past.retries)  # number -> the run of the interrupted trial it reruns
        self.unwritten = 0

    def started(self, number: int, raw: dict[str, Any]) -> None:
        self.started_at[number] = (time.time(), raw)

    def ended(self, result: TrialResult) -> None:
        start, raw = self.started_at.pop(result.number)
        rerun = self.reruns.get(result.number)
        if result.retry_of not in (None, rerun):
            self.unseen.append(start)  # Spark ran it again: the lost attempt's run is in the store
        if not result.run_id:  # it never had a run
            return
        self.records[result.run_id] = Record.of_result(result, raw)
        self.unwritten += 1
        if self.unwritten >= SNAPSHOT_EVERY:
            self.write()

    def model_deleted(self, run_id: str) -> None:
        if run_id in self.records:
            self.records[run_id] = dataclasses.replace(self.records[run_id], model_logged=False)

    def write(self) -> None:
        """Upload the snapshot; a failure costs a slower resume, never the study."""
        starts = [start for start, _ in self.started_at.values()] + self.unseen
        stored = {"format": _FORMAT, "horizon": min(starts, default=time.time()) - self.clock_margin,
                  "keep_models": self.keep_models,
                  "records": [vars(record) for record in self.records.values()]}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, SNAPSHOT_FILE)
            text = json.dumps(stored, separators=(",", ":"))
            path.write_bytes(gzip.compress(text.encode(), compresslevel=1))  # 0.1 s at 10,000 trials
            try:
                self.tracker.log_file(self.study_run_id, str(path), SNAPSHOT_FOLDER)
            except TrackingError as error:
                _log.warning("the study's history snapshot was not stored (%s): --resume reads every "
                             "trial run instead", error)
                return
        self.unwritten = 0


def end_orphans(tracker: Tracker, experiment_id: str, study_run_id: str, reason: str,
                status: str = "KILLED", number: int | None = None) -> list[Run]:
    """End the trial runs of a study still RUNNING (of trial ``number`` only, if given),
    whose Spark tasks were cancelled or died; those runs, as they were read."""
    condition = "attributes.status = 'RUNNING'"
    if number is not None:
        condition += f" and tags.`tuning.trial` = '{number}'"
    runs = list(tracker.trial_runs(experiment_id, study_run_id, condition))
    for run in runs:
        _end(tracker, run.info.run_id, reason, status)
    return runs


def _end(tracker: Tracker, run_id: str, reason: str, status: str = "KILLED") -> None:
    tags = {"tuning.error": reason}
    if status == "KILLED":  # its study stopped, or the process died, under it: --resume reruns it
        tags[INTERRUPTED_TAG] = "true"
    tracker.log(run_id, tags=tags)
    tracker.end_run(run_id, status)


def _hyperopt_doc(result: TrialResult, raw: dict[str, Any]) -> dict[str, Any]:
    doc = generate_trial(result.number - 1, raw)
    doc["state"] = base.JOB_STATE_DONE
    doc["result"] = result.to_hyperopt()
    return doc


def _typed(text: str) -> Any:
    """A param read back from MLflow (a string) as the number it was, where it was one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")
