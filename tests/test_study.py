"""Studies against a real sqlite store: what a user finds in MLflow afterwards."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import tuning
from tests.conftest import DIGITS_DATA


def runs(store: str, experiment: str = "recipe") -> tuple:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    all_runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    study = [r for r in all_runs if r.data.tags["tuning.kind"] == "study"]
    trials = [r for r in all_runs if r.data.tags["tuning.kind"] == "trial"]
    return client, study, trials


def test_every_trial_is_a_child_run_with_params_metrics_and_model(write_recipe, store, tmp_path,
                                                                 monkeypatch):
    recipe = write_recipe(epochs=2)
    study = tuning.minimize(recipe, max_evals=3, seed=7, tracking_uri=store, progress=False)

    client, (parent,), trials = runs(store)
    assert study.run_id == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.params["seed"] == "7" and parent.data.tags["tuning.max_evals"] == "3"
    assert parent.data.params["algo"] == "tpe"
    assert len(trials) == 3
    names = ["Dense", "activation", "Dropout", "batch_size"]
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for name in names:  # real values as tags and params, never choice indices
            assert run.data.tags[name] == run.data.params[name]
        assert run.data.params["activation"] in {"relu", "tanh"}
        assert run.data.params["batch_size"] in {"32", "64"}
        assert int(run.data.params["Dense"]) in {8, 16, 24, 32}
        assert 0 <= float(run.data.params["Dropout"]) <= 0.5
        raw = json.loads(run.data.tags["tuning.hyperopt_vals"])
        assert set(raw) == set(names) and raw["activation"] in (0, 1)
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == [0, 1]  # one point per epoch
        metrics = run.data.metrics
        assert metrics["hyperopt_loss"] == pytest.approx(-metrics["test_accuracy"])
        assert metrics["test_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)

    best = min(trials, key=lambda r: r.data.metrics["hyperopt_loss"])
    assert parent.data.tags["tuning.best_run_id"] == best.info.run_id == study.best.run_id
    assert parent.data.tags["best.Dense"] == best.data.params["Dense"]
    assert parent.data.metrics["best_hyperopt_loss"] == pytest.approx(best.data.metrics["hyperopt_loss"])
    space = json.loads(Path(client.download_artifacts(parent.info.run_id, "space.json", ".")).read_text())
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "quniform" in text)
    assert space["Dense"] == {"distribution": "quniform(8, 32, 8)", "line": line, "integer": True,
                              "values": [8, 16, 24, 32]}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "recipe")] == ["recipe/recipe.py"]

    # The best model reloads, through the Keras flavor and pyfunc, and predicts.
    x = np.random.default_rng(0).random((3, 64)).astype("float32")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where MLflow downloads a model to load
    keras_model = tuning.load_best("recipe", tracking_uri=store)
    assert keras_model.predict(x, verbose=0).shape == (3, 10)
    assert list(temp.iterdir()) == []  # no copy of the model left behind (MLflow leaves one)
    mlflow.set_tracking_uri(store)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{best.info.run_id}/model")
    assert np.asarray(pyfunc.predict(x)).shape == (3, 10)
    assert pyfunc.metadata.signature is not None
    assert study.best.params == {n: type(study.best.params[n])(best.data.params[n]) for n in names}


PANDAS_DATA = """
import keras
import pandas as pd
from sklearn.datasets import load_iris


def data():
    x, y = load_iris(return_X_y=True, as_frame=True)
    y = pd.get_dummies(y).astype("float32")
    return x[:120], y[:120], x[120:], y[120:]
"""


def test_a_tabular_recipe_whose_data_are_dataframes_logs_its_models(write_recipe, store):
    """pandas' frames describe themselves by column, which MLflow's Keras flavor refuses:
    the signature is of the arrays Keras trains on."""
    recipe = write_recipe(header=PANDAS_DATA, model='''
    def model(x_train, y_train, x_test, y_test):
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(<<choice([8, 16])>>),
                                keras.layers.Dense(3, activation="softmax")])
        net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        net.fit(x_train, y_train, epochs=EPOCHS, verbose=0)
        return net
    ''')
    study = tuning.minimize(recipe, max_evals=2, tracking_uri=store, progress=False)
    _, _, trials = runs(store)
    assert [r.info.status for r in trials] == ["FINISHED", "FINISHED"]
    mlflow.set_tracking_uri(store)
    model = mlflow.models.get_model_info(f"runs:/{study.best.run_id}/model")
    assert model.signature.inputs.inputs[0].shape == (-1, 4)
    assert model.signature.outputs.inputs[0].shape == (-1, 3)


def test_models_without_test_inputs_are_said_once_to_have_no_signature(write_recipe, store, caplog, capfd):
    """``data()`` returning ``x, y`` gives no test inputs to describe: one line says so,
    instead of MLflow's warning at every trial's save."""
    recipe = write_recipe(header=DIGITS_DATA.replace("return x_train, y_train, x_test, y_test",
                                                     "return x_train, y_train"), model='''
    def model(x, y):
        net = keras.Sequential([keras.Input((64,)), keras.layers.Dense(<<choice([8, 16])>>),
                                keras.layers.Dense(10, activation="softmax")])
        net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        net.fit(x, y, epochs=EPOCHS, validation_split=0.2, verbose=0)
        return net
    ''')
    tuning.minimize(recipe, max_evals=3, tracking_uri=store, progress=False)
    _, _, trials = runs(store)
    assert [r.info.status for r in trials] == ["FINISHED"] * 3
    assert all(r.outputs.model_outputs for r in trials)
    assert caplog.text.count("the models are logged without a signature") == 1
    assert "without specifying model signature" not in caplog.text + capfd.readouterr().err


@pytest.mark.slow
def test_failing_and_nan_trials_are_failed_runs_and_the_search_goes_on(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        kind = <<choice(["ok", "raise", "nan"])>>
        if kind == "raise":
            raise RuntimeError("boom from the recipe")
        net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(10, activation="softmax")])
        net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        net.fit(x_train, y_train, epochs=1, verbose=0)
        if kind == "nan":
            return {"loss": float("nan"), "status": "ok"}
        return net
    ''')
    study = tuning.minimize(recipe, max_evals=12, seed=3, algo="rand", tracking_uri=store,
                            progress=False, log_model=False)
    client, (parent,), trials = runs(store)
    kinds = {r.data.params["kind"]: r for r in trials}
    assert set(kinds) == {"ok", "raise", "nan"}, "seed 3 samples all three kinds in 12 trials"
    for run in trials:
        expected = "FINISHED" if run.data.params["kind"] == "ok" else "FAILED"
        assert run.info.status == expected
    failed = kinds["raise"]
    assert failed.data.tags["tuning.error"] == "RuntimeError: boom from the recipe"
    text = Path(client.download_artifacts(failed.info.run_id, "error.txt", ".")).read_text()
    line = next(i for i, code in enumerate(recipe.read_text().splitlines(), 1) if "boom" in code)
    assert f'File "{recipe}", line {line}, in model\n    raise RuntimeError("boom from the recipe")' in text
    assert "NaN" in kinds["nan"].data.tags["tuning.error"]
    assert parent.info.status == "FINISHED"
    assert len(study.trials) == 12 and study.best.params["kind"] == "ok"


def test_all_trials_failing_ends_the_study_failed(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        raise ValueError(<<choice(["a", "b"])>>)
    ''')
    study = tuning.minimize(recipe, max_evals=2, tracking_uri=store, progress=False)
    assert study.best is None and len(study.failed) == 2
    _, (parent,), trials = runs(store)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["tuning.error"] == "all 2 trials failed"
    assert [r.info.status for r in trials] == ["FAILED", "FAILED"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["tpe", "rand", "anneal"])
def test_the_same_seed_samples_the_same_params(write_recipe, store, algo):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        return {"loss": <<uniform(0, 1)>> + <<choice([0, 1])>>, "status": "ok"}
    ''')
    sequences = []
    for experiment in ("one", "two", "three"):
        seed = 11 if experiment != "three" else 12
        study = tuning.minimize(recipe, max_evals=6, seed=seed, algo=algo, experiment=experiment,
                                tracking_uri=store, progress=False)
        sequences.append([t.params for t in study.trials])
    assert sequences[0] == sequences[1]
    assert sequences[0] != sequences[2]


@pytest.mark.slow
def test_objective_val_loss_is_minimised_and_history_model_tuples_work(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        net = keras.Sequential([keras.Input(shape=(64,)),
                                keras.layers.Dense(<<choice([4, 8])>>, activation="relu"),
                                keras.layers.Dense(10, activation="softmax")])
        net.compile(optimizer="adam", loss="categorical_crossentropy")
        history = net.fit(x_train, y_train, epochs=2, validation_split=0.2, verbose=0)
        return history, net
    ''', extra='OBJECTIVE = "val_loss"\n')
    tuning.minimize(recipe, max_evals=2, tracking_uri=store, progress=False, log_model=False)
    _, (parent,), trials = runs(store)
    assert parent.data.params["objective"] == "val_loss" and parent.data.params["mode"] == "min"
    for run in trials:
        assert run.data.metrics["hyperopt_loss"] == pytest.approx(run.data.metrics["val_loss"])
        assert "test_loss" not in run.data.metrics  # val_ metrics come from the last epoch


def test_missing_objective_names_the_metrics_that_exist(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(<<choice([10])>>)])
        net.compile(optimizer="adam", loss="mse")
        net.fit(x_train, y_train, epochs=1, verbose=0)
        return net
    ''')
    study = tuning.minimize(recipe, max_evals=1, tracking_uri=store, progress=False)
    assert "objective 'accuracy' was not measured; available metrics: loss" in study.failed[0].error


@pytest.mark.slow
def test_recipe_defaults_are_used_and_keyword_arguments_win(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        return {"loss": <<uniform(0, 1)>>, "status": "ok"}
    ''', extra='EXPERIMENT = "from_recipe"\nMAX_EVALS = 2\nALGO = "rand"\n')
    study = tuning.minimize(recipe, tracking_uri=store, progress=False)
    assert (study.experiment, len(study.trials)) == ("from_recipe", 2)
    study = tuning.minimize(recipe, tracking_uri=store, progress=False, max_evals=1, experiment="kw")
    _, (parent,), _ = runs(store, "kw")
    assert parent.data.params["algo"] == "rand" and len(study.trials) == 1


def test_keras_state_is_cleared_between_trials(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        # Without clear_session between trials, the next trial's layer would be dense_1.
        layer = keras.layers.Dense(<<choice([3])>>)
        return {"loss": 0.0 if layer.name == "dense" else 1.0, "status": "ok"}
    ''')
    study = tuning.minimize(recipe, max_evals=3, tracking_uri=store, progress=False)
    assert [t.loss for t in study.trials] == [0.0, 0.0, 0.0]


WITH_BLOCK = """
        with mlflow.start_run():
            mlflow.log_param("units_by_hand", units)
            mlflow.log_metric("custom", 0.5)
"""
BARE_CALLS = """
        mlflow.log_param("units_by_hand", units)
        mlflow.log_metric("custom", 0.5)
"""


@pytest.mark.parametrize("logging_code", [WITH_BLOCK, BARE_CALLS], ids=["with-block", "bare-calls"])
def test_tutorial_style_mlflow_code_in_the_model_logs_into_the_trial_run(write_recipe, store,
                                                                         logging_code):
    recipe = write_recipe(model='''
    import mlflow

    def model(x_train, y_train, x_test, y_test):
        units = <<choice([4, 8])>>
''' + logging_code + '''
        return {"loss": -units, "status": "ok"}
    ''')
    tuning.minimize(recipe, max_evals=2, tracking_uri=store, progress=False)
    client, (parent,), trials = runs(store)
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(every_run) == 3  # no stray runs: the user's calls went into the trials
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.params["units_by_hand"] == run.data.params["units"]
        assert run.data.metrics["custom"] == 0.5
    assert mlflow.active_run() is None
