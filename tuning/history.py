"""A study's history, rebuilt from the tracking server alone (for ``--resume``).

Each trial run carries its raw hyperopt values (``tuning.hyperopt_vals``), its loss and
its status, which is all hyperopt needs to continue informed: no pickle beside the
server. Runs are read a page at a time, so a study of thousands of trials resumes in
seconds.
"""

from __future__ import annotations

import json
from typing import Any

from hyperopt import Trials, base
from hyperopt.fmin import generate_trial
from mlflow.entities import Run

from tuning.best import trial_runs
from tuning.tracking import KIND_TAG, LOSS_METRIC, STRATEGY_TAG, Tracker
from tuning.trial import TrialResult, TrialStatus

_STATUS = {"FINISHED": TrialStatus.OK, "FAILED": TrialStatus.FAILED, "KILLED": TrialStatus.KILLED}


def unfinished_study(tracker: Tracker, experiment_id: str, recipe: str) -> Run | None:
    """The newest hyperopt study run of ``recipe`` in the experiment that did not finish."""
    query = (f"tags.`{KIND_TAG}` = 'study' and tags.`tuning.recipe` = '{_quoted(recipe)}' "
             "and attributes.status != 'FINISHED'")
    found = tracker.client.search_runs([experiment_id], query, max_results=20,
                                       order_by=["attributes.start_time DESC"])
    # A population based training study has no hyperopt trials to continue.
    return next((run for run in found if run.data.tags.get(STRATEGY_TAG) != "pbt"), None)


def rebuild(tracker: Tracker, experiment_id: str, study_run_id: str,
            trials: Trials) -> list[TrialResult]:
    """Fill ``trials`` with the study's finished trials; mark runs left RUNNING as KILLED.

    A run still RUNNING belongs to a process that died (kill -9, power cut): it ends
    KILLED and, like every killed or failed trial, counts toward ``max_evals`` with
    hyperopt seeing it as failed.
    """
    results, docs = [], []
    for run in trial_runs(tracker, experiment_id, study_run_id):
        if run.info.status == "RUNNING":
            _end(tracker, run, "the process running it died")
        result = _result(run)
        results.append(result)
        docs.append(_hyperopt_doc(result, json.loads(run.data.tags.get("tuning.hyperopt_vals", "{}"))))
    results.sort(key=lambda r: r.number)
    docs.sort(key=lambda d: d["tid"])
    if docs:
        trials.insert_trial_docs(docs)
        trials.refresh()
    return results


def end_orphans(tracker: Tracker, experiment_id: str, study_run_id: str, reason: str,
                status: str = "KILLED", number: int | None = None) -> list[str]:
    """End the trial runs of a study still RUNNING (of trial ``number`` only, if given),
    whose Spark tasks were cancelled or died; their ids."""
    condition = "attributes.status = 'RUNNING'"
    if number is not None:
        condition += f" and tags.`tuning.trial` = '{number}'"
    runs = list(trial_runs(tracker, experiment_id, study_run_id, condition))
    for run in runs:
        _end(tracker, run, reason, status)
    return [run.info.run_id for run in runs]


def _end(tracker: Tracker, run: Run, reason: str, status: str = "KILLED") -> None:
    tracker.log(run.info.run_id, tags={"tuning.error": reason})
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
                       params, loss, run.data.tags.get("tuning.error"))


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
