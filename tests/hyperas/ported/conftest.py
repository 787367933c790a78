"""hyperas' own tests, ported only as Keras 3 and an offline machine require, run as they
are against a real ``mlflow server``. They assert little themselves; every one of them
must also leave each study FINISHED with one FINISHED child run per trial, its
hyperparameters as params and tags, and write no file into the working folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))  # `from offline import mnist`


@pytest.fixture(autouse=True)
def _leaves_one_finished_run_per_trial(tmp_path, monkeypatch, mlflow_server, request):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    experiment = f"hyperas-{request.node.name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    yield
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    studies = [r for r in runs if r.data.tags.get("tuning.kind") == "study"]
    assert studies
    for study in studies:
        assert study.info.status == "FINISHED"
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
        assert len(trials) == int(study.data.tags["tuning.max_evals"])
        for trial in trials:
            assert trial.info.status == "FINISHED"
            assert trial.data.params and all(trial.data.tags[k] == v for k, v in trial.data.params.items())
    assert not list(work.iterdir())
