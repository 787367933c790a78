"""The tracking server goes away mid-study: training goes on, nothing finished is lost."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

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


class ServedStudy:
    """A real mlflow server of its own and a `tuning run` against it, in a subprocess."""

    def __init__(self, tmp_path: Path, write_recipe, *flags: str):
        self.folder = tmp_path / "server"
        self.folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = start_server(self.folder, self.port)
        self.recipe = write_recipe(model=MODEL, extra='EXPERIMENT = "outage"\n')
        self.study = subprocess.Popen(
            [TUNING, "run", str(self.recipe), "--tracking-uri", self.url, *flags], cwd=tmp_path,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    def wait_for_finished_trials(self, count: int) -> None:
        deadline = time.monotonic() + 180
        while len(finished_trials(self.url)) < count:
            assert time.monotonic() < deadline and self.study.poll() is None, self.study.stderr.read()
            time.sleep(0.2)

    def restart_server(self) -> None:
        self.server = start_server(self.folder, self.port)  # same store, same address

    def stop(self) -> None:
        if self.study.poll() is None:
            self.study.kill()
        stop_server(self.server)


def test_server_killed_and_restarted_mid_study_loses_nothing(write_recipe, tmp_path):
    served = ServedStudy(tmp_path, write_recipe, "--max-evals", "5", "--seed", "3", "--patience", "300")
    try:
        served.wait_for_finished_trials(2)
        stop_server(served.server)  # mid-study: the third trial is training
        time.sleep(5)
        served.restart_server()
        _, stderr = served.study.communicate(timeout=600)
    finally:
        served.stop()
    assert served.study.returncode == 0, stderr
    assert "unreachable" in stderr and "retrying for up to 300 s" in stderr

    served.restart_server()
    try:
        client = MlflowClient(served.url)
        trials = finished_trials(served.url)
        assert len(trials) == 5
        for trial in trials:
            for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
                steps = [m.step for m in client.get_metric_history(trial.info.run_id, metric)]
                assert sorted(steps) == [0, 1, 2, 3], (trial.data.tags["tuning.trial"], metric, steps)
            assert "hyperopt_loss" in trial.data.metrics
        (parent,) = client.search_runs([trials[0].info.experiment_id], "tags.`tuning.kind` = 'study'")
        assert parent.info.status == "FINISHED"
    finally:
        served.stop()


def test_patience_runs_out_and_the_study_stops_cleanly(write_recipe, tmp_path):
    served = ServedStudy(tmp_path, write_recipe, "--max-evals", "6", "--patience", "3")
    try:
        served.wait_for_finished_trials(1)
        stop_server(served.server)
        _, stderr = served.study.communicate(timeout=300)
    finally:
        served.stop()
    assert served.study.returncode == 1
    assert f"error: the tracking store {served.url} was unreachable for 3 s" in stderr
    assert "continue with --resume once it is back" in stderr
    assert "Traceback" not in stderr

    served.restart_server()
    try:
        assert len(finished_trials(served.url)) >= 1
        resumed = subprocess.run([TUNING, "run", str(served.recipe), "--tracking-uri", served.url,
                                  "--max-evals", "6", "--resume"], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        client = MlflowClient(served.url)
        runs = client.search_runs([finished_trials(served.url)[0].info.experiment_id],
                                  "tags.`tuning.kind` = 'trial'")
        assert len(runs) == 6 and all(r.info.status in ("FINISHED", "KILLED") for r in runs)
        assert len(finished_trials(served.url)) >= 5
    finally:
        served.stop()
