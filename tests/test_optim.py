"""The hyperas drop-in: same arguments, same return values, plus MLflow tracking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from hyperas.distributions import choice  # noqa: F401 - as hyperas scripts do, for linters
from hyperopt import STATUS_OK, Trials, rand, tpe
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from tuning import optim

HYPERAS_SCRIPT = Path(__file__).parent / "data" / "hyperas_script.py"


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = keras.utils.to_categorical(digits.target, 10)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def create_model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)),
                            keras.layers.Dense({{choice([8, 16])}}, activation={{choice(["relu", "tanh"])}}),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=1, verbose=0)
    _, accuracy = net.evaluate(x_test, y_test, verbose=0)
    return {"loss": -accuracy, "status": STATUS_OK, "model": net}


def test_minimize_returns_what_hyperas_returns(tmp_path):
    trials = Trials()
    best_run, best_model, space = optim.minimize(model=create_model, data=data, algo=rand.suggest,
                                                 max_evals=3, trials=trials, verbose=False,
                                                 return_space=True)
    assert len(trials.trials) == 3 and all(r["status"] == "ok" for r in trials.results)
    assert all("model" not in r for r in trials.results)  # no models kept in memory
    assert set(best_run) == {"Dense", "activation"}
    assert best_run["Dense"] in (0, 1) and best_run["activation"] in (0, 1)  # raw indices, as hyperas
    assert set(space) == {"Dense", "activation"}
    x_train, y_train, x_test, y_test = data()
    assert best_model.predict(x_test[:2], verbose=0).shape == (2, 10)
    assert best_model.layers[0].units == [8, 16][best_run["Dense"]]
    assert not list(Path.cwd().glob("temp_model.py*"))

    evaluated, _ = optim.minimize(model=create_model, data=data, algo=tpe.suggest, max_evals=1,
                                  trials=Trials(), eval_space=True, verbose=False)
    assert evaluated["Dense"] in (8, 16) and evaluated["activation"] in ("relu", "tanh")

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("test_optim")
    trial_runs = client.search_runs([experiment.experiment_id], "tags.`tuning.kind` = 'trial'")
    assert len(trial_runs) == 4
    assert {r.data.params["activation"] for r in trial_runs} <= {"relu", "tanh"}


@pytest.mark.slow
def test_a_hyperas_script_runs_with_one_import_changed(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_EXPERIMENT_NAME": "hyperas"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([sys.executable, str(HYPERAS_SCRIPT)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Best performing model chosen hyper-parameters:" in run.stdout
    assert not (tmp_path / "temp_model.py").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("hyperas")
    runs = client.search_runs([experiment.experiment_id], "tags.`tuning.kind` = 'trial'")
    assert len(runs) == 3
    # The names hyperas gives these markers, with real values (not choice indices).
    for run_ in runs:
        assert set(run_.data.params) == {"Dropout", "Dense", "Activation", "Dropout_1", "Dropout_2",
                                         "optimizer", "batch_size"}
        assert run_.data.params["optimizer"] in {"rmsprop", "adam", "sgd"}
        assert run_.data.params["Dropout_2"] in {"three", "four"}
        assert run_.info.status == "FINISHED"
