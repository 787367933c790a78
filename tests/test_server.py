"""End to end against a real ``mlflow server``: the CLI, live metrics, reloading the best model."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from mlflow import MlflowClient

import tuning
from tests.test_cli import TUNING

pytestmark = pytest.mark.slow

# A user's own callback that, during the third epoch, asks the server how many points of
# val_loss the running trial already has: the answer proves metrics arrive while training.
LIVE_PROBE = '''
import json, os, time
from mlflow import MlflowClient


class Probe(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch != 2:
            return
        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("served")
        deadline, seen = time.monotonic() + 60, 0  # until both points arrived (else the test fails)
        while time.monotonic() < deadline and seen < 2:
            running = client.search_runs([experiment.experiment_id],
                                         "attributes.status = 'RUNNING' and tags.`tuning.kind` = 'trial'")
            seen = max((len(client.get_metric_history(r.info.run_id, "val_loss")) for r in running),
                       default=0)
            time.sleep(0.2)
        with open(os.environ["PROBE_FILE"], "a") as f:
            f.write(json.dumps(seen) + "\\n")
'''

MODEL = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(<<quniform(8, 32, 8)>>, activation="relu"),
        keras.layers.Dropout(<<uniform(0, 0.5)>>),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=3, batch_size=<<choice([32, 64])>>,
            validation_data=(x_test, y_test), callbacks=[Probe()])
    return net
'''


def test_cli_study_against_a_real_server(mlflow_server, write_recipe, tmp_path):
    recipe = write_recipe(model=MODEL, extra=LIVE_PROBE + '\nEXPERIMENT = "served"\n')
    probe = tmp_path / "probe.txt"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PROBE_FILE": str(probe),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([TUNING, "run", str(recipe), "--max-evals", "3", "--seed", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"open {mlflow_server} in a browser" in run.stdout
    assert "View run" not in run.stdout + run.stderr  # MLflow's own line per run would cut into ours
    # The reload command keeps the server it was given.
    assert f"tracking_uri='{mlflow_server}')" in run.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    assert [json.loads(line) for line in probe.read_text().splitlines()] == [2, 2, 2]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    (study,) = [r for r in runs if r.data.tags["tuning.kind"] == "study"]
    trials = [r for r in runs if r.data.tags["tuning.kind"] == "trial"]
    assert study.info.status == "FINISHED" and len(trials) == 3
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert trial.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert {"Dense", "Dropout", "batch_size"} <= set(trial.data.params)
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [0, 1, 2]

    best = min(trials, key=lambda r: r.data.metrics["hyperopt_loss"])
    assert study.data.tags["tuning.best_run_id"] == best.info.run_id
    model = tuning.load_best("served", tracking_uri=mlflow_server)
    x = np.random.default_rng(1).random((4, 64)).astype("float32")
    assert model.predict(x, verbose=0).shape == (4, 10)
    by_id = tuning.load_best(best.info.run_id, tracking_uri=mlflow_server)
    np.testing.assert_allclose(by_id.predict(x, verbose=0), model.predict(x, verbose=0))
