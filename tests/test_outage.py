"""The tracking server goes away mid-study: training goes on, nothing finished is lost."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port, start_server, stop_server
from tests.test_cli import TUNING

pytestmark = pytest.mark.slow

MODEL = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)),
                            keras.layers.Dense(<<quniform(8, 32, 8)>>, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=4, batch_size=<<choice([16, 32])>>,
            validation_data=(x_test, y_test))
    return net
'''


def finished_trials(url: str) -> list:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("outage")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              "tags.`tuning.kind` = 'trial' and attributes.status = 'FINISHED'")


def test_server_killed_and_restarted_mid_study_loses_nothing(write_recipe, tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(folder, port)
    recipe = write_recipe(model=MODEL, extra='EXPERIMENT = "outage"\n')
    study = subprocess.Popen([TUNING, "run", str(recipe), "--tracking-uri", url, "--max-evals", "5",
                              "--seed", "3", "--patience", "300"],
                             cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.monotonic() + 180
        while len(finished_trials(url)) < 2:
            assert time.monotonic() < deadline and study.poll() is None, study.stderr.read()
            time.sleep(0.2)
        stop_server(server)  # mid-study: the third trial is training
        time.sleep(5)
        server = start_server(folder, port)  # same store, same address
        stdout, stderr = study.communicate(timeout=600)
    finally:
        if study.poll() is None:
            study.kill()
        stop_server(server)
    assert study.returncode == 0, stderr
    assert "unreachable" in stderr and "retrying for up to 300 s" in stderr

    server = start_server(folder, port)
    try:
        client = MlflowClient(url)
        trials = finished_trials(url)
        assert len(trials) == 5
        for trial in trials:
            for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
                steps = [m.step for m in client.get_metric_history(trial.info.run_id, metric)]
                assert sorted(steps) == [0, 1, 2, 3], (trial.data.tags["tuning.trial"], metric, steps)
            assert "hyperopt_loss" in trial.data.metrics
        (parent,) = client.search_runs([trials[0].info.experiment_id], "tags.`tuning.kind` = 'study'")
        assert parent.info.status == "FINISHED"
    finally:
        stop_server(server)


def test_patience_runs_out_and_the_study_stops_cleanly(write_recipe, tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(folder, port)
    recipe = write_recipe(model=MODEL, extra='EXPERIMENT = "outage"\n')
    study = subprocess.Popen([TUNING, "run", str(recipe), "--tracking-uri", url, "--max-evals", "6",
                              "--patience", "3"],
                             cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.monotonic() + 180
        while len(finished_trials(url)) < 1:
            assert time.monotonic() < deadline and study.poll() is None, study.stderr.read()
            time.sleep(0.2)
        stop_server(server)
        stdout, stderr = study.communicate(timeout=300)
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 1
    assert f"error: the tracking store {url} was unreachable for 3 s" in stderr
    assert "continue with --resume once it is back" in stderr
    assert "Traceback" not in stderr

    server = start_server(folder, port)
    try:
        done = len(finished_trials(url))
        assert done >= 1
        resumed = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", url, "--max-evals", "6",
                                  "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        client = MlflowClient(url)
        runs = client.search_runs([finished_trials(url)[0].info.experiment_id],
                                  "tags.`tuning.kind` = 'trial'")
        assert len(runs) == 6 and all(r.info.status in ("FINISHED", "KILLED") for r in runs)
        assert len(finished_trials(url)) >= 5
    finally:
        stop_server(server)
