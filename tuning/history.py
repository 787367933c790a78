"""A study's history, rebuilt from the tracking server alone (for ``--resume``).

Each trial run carries its raw hyperopt values (``tuning.hyperopt_vals``), its loss and
its status, which is all hyperopt needs to continue informed: no pickle beside the
server. Runs are read a page at a time, so a study of thousands of trials resumes in
seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hyperopt import Trials, base
from hyperopt.fmin import generate_trial
from mlflow.entities import Run

from tuning.tracking import (
    INTERRUPTED_TAG,
    KIND_TAG,
    LOSS_METRIC,
    MODEL_DELETED_TAG,
    OWN_LOSS_TAG,
    RETRY_TAG,
    STRATEGY_TAG,
    Tracker,
)
from tuning.trial import TrialResult, TrialStatus

_STATUS = {"FINISHED": TrialStatus.OK, "FAILED": TrialStatus.FAILED, "KILLED": TrialStatus.KILLED}


def unfinished_study(tracker: Tracker, experiment_id: str, recipe: str) -> Run | None:
    """The newest hyperopt study run of ``recipe`` in the experiment that did not finish."""
    query = (f"tags.`{KIND_TAG}` = 'study' and tags.`tuning.recipe` = '{_quoted(recipe)}' "
             "and attributes.status != 'FINISHED'")
    found = tracker.runs(experiment_id, query, limit=20, order_by=["attributes.start_time DESC"])
    # A population based training study has no hyperopt trials to continue.
    return next((run for run in found if run.data.tags.get(STRATEGY_TAG) != "pbt"), None)


@dataclass(frozen=True)
class History:
    """A study's past, as ``--resume`` continues it."""

    results: list[TrialResult]  # the trials that ran to an end: they count toward max_evals
    proposals: int  # configurations proposed so far (a rerun is none): the random draws made
    retries: tuple[tuple[int, str], ...]  # (new trial number, run id of the interrupted trial it reruns)


def rebuild(tracker: Tracker, experiment_id: str, study_run_id: str, trials: Trials) -> History:
    """Fill ``trials`` with the study's past: every trial that ran to an end (finished,
    failed, pruned, stopped by a limit) as done, and each interrupted one's configuration
    queued to run again first, under a new trial number.

    A run still RUNNING belongs to a process that died (kill -9, power cut): it ends
    KILLED and counts as interrupted.
    """
    runs = list(tracker.trial_runs(experiment_id, study_run_id))
    rerun = {run.data.tags.get(RETRY_TAG) for run in runs}
    results, docs, interrupted = [], [], []
    for run in runs:
        raw = json.loads(run.data.tags.get("tuning.hyperopt_vals", "{}"))
        if run.info.status == "RUNNING":
            _end(tracker, run, "the process running it died")
        elif not (run.info.status == "KILLED" and run.data.tags.get(INTERRUPTED_TAG) == "true"):
            result = _result(run)
            results.append(result)
            docs.append(_hyperopt_doc(result, raw))
            continue
        if run.info.run_id not in rerun:
            interrupted.append((int(run.data.tags["tuning.trial"]), run.info.run_id, raw))
    results.sort(key=lambda r: r.number)
    docs.sort(key=lambda d: d["tid"])
    trials.insert_trial_docs(docs)
    trials.refresh()
    trials._ids.update(int(run.data.tags["tuning.trial"]) - 1 for run in runs)  # numbers stay unique
    retries = []
    for _, run_id, raw in sorted(interrupted):
        (tid,) = trials.new_trial_ids(1)
        trials.insert_trial_docs([generate_trial(tid, raw)])  # state NEW: run before any proposal
        retries.append((tid + 1, run_id))
    trials.refresh()
    return History(results, sum(RETRY_TAG not in run.data.tags for run in runs), tuple(retries))


def end_orphans(tracker: Tracker, experiment_id: str, study_run_id: str, reason: str,
                status: str = "KILLED", number: int | None = None) -> list[str]:
    """End the trial runs of a study still RUNNING (of trial ``number`` only, if given),
    whose Spark tasks were cancelled or died; their ids."""
    condition = "attributes.status = 'RUNNING'"
    if number is not None:
        condition += f" and tags.`tuning.trial` = '{number}'"
    runs = list(tracker.trial_runs(experiment_id, study_run_id, condition))
    for run in runs:
        _end(tracker, run, reason, status)
    return [run.info.run_id for run in runs]


def _end(tracker: Tracker, run: Run, reason: str, status: str = "KILLED") -> None:
    tags = {"tuning.error": reason}
    if status == "KILLED":  # its study stopped, or the process died, under it: --resume reruns it
        tags[INTERRUPTED_TAG] = "true"
    tracker.log(run.info.run_id, tags=tags)
    tracker.end_run(run.info.run_id, status)


def _result(run: Run) -> TrialResult:
    status = _STATUS.get(run.info.status, TrialStatus.KILLED)
    if status is TrialStatus.KILLED and run.data.tags.get("tuning.pruned") == "true":
        status = TrialStatus.PRUNED
    loss = run.data.metrics.get(LOSS_METRIC) if status in (TrialStatus.OK, TrialStatus.PRUNED) else None
    if status is TrialStatus.OK and loss is None:  # finished, yet no loss was logged: unusable
        status = TrialStatus.FAILED
    params = {k: _typed(v) for k, v in run.data.params.items()}
    return TrialResult(int(run.data.tags["tuning.trial"]), run.info.run_id, status,
                       params, loss, run.data.tags.get("tuning.error"),
                       model_logged=bool(run.outputs and run.outputs.model_outputs)
                       and MODEL_DELETED_TAG not in run.data.tags,
                       own_loss=run.data.tags.get(OWN_LOSS_TAG) == "true")


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
