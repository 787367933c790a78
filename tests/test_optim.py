"""The hyperas drop-in: same arguments, same return values, plus MLflow tracking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest
from click.testing import CliRunner
from hyperas.distributions import choice  # noqa: F401 - as hyperas scripts do, for linters
from hyperopt import STATUS_OK, Trials, rand, tpe
from mlflow import MlflowClient
from mlflow.entities import ViewType
from sklearn.datasets import load_digits

import tuning
from tests.user_metrics import agreement
from tuning import optim
from tuning.cli import main
from tuning.errors import RecipeError
from tuning.recipe import Recipe

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


@pytest.mark.slow
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


def scoped_data():
    """hyperas pastes this body above the model: ``hidden`` is a global of the model."""
    hidden = 8  # noqa: F841 - read by the model, as in hyperas
    x_train, y_train, x_test, y_test = data()
    return x_train[:300], y_train[:300], x_test, y_test


def uses_data_names(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(hidden),  # noqa: F821 - from data()
                            keras.layers.Dense(10, activation={{choice(["softmax"])}})])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=1, verbose=0)
    _, accuracy = net.evaluate(x_test, y_test, verbose=0)
    return {"loss": -accuracy, "status": STATUS_OK, "extra": "kept"}  # no model: the fitted one is logged


def test_names_data_defines_are_globals_of_the_model_and_an_unreturned_model_is_logged(tmp_path):
    trials = Trials()
    best_run, best_model = optim.minimize(model=uses_data_names, data=scoped_data, algo=rand.suggest,
                                          max_evals=2, trials=trials, verbose=False)
    assert best_run == {"activation": 0}
    assert best_model.layers[0].units == 8  # the model data()'s hidden built, reloaded from MLflow
    # The rest of model()'s dict stays in trials.results, as hyperopt keeps it.
    assert [r["extra"] for r in trials.results] == ["kept", "kept"]
    assert "hidden" not in globals()  # the script's own module is left alone
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("test_optim").experiment_id],
                              "tags.`tuning.kind` = 'trial'")
    assert len(runs) == 2 and all(r.outputs.model_outputs for r in runs)


def split_data():
    x = np.arange(50.0)
    trainX, testX, trainY, testY = x[:40], x[40:], -x[:40], -x[40:]  # noqa: N806 - as scripts name them
    return trainX, testX, trainY, testY, "kept for the script's own use"


def named_in_another_order(trainX, testX, testY, trainY):  # noqa: N803
    assert (len(trainX), len(trainY), len(testX), len(testY)) == (40, 40, 10, 10)
    assert (trainY == -trainX).all() and (testY == -testX).all()
    loss = {{choice([1.0, 2.0])}}
    return {"loss": loss, "status": STATUS_OK}


def without_parameters():
    assert (trainY == -trainX).all() and len(testX) == 10  # noqa: F821 - data()'s, as in hyperas
    loss = {{choice([1.0, 2.0])}}
    return {"loss": loss, "status": STATUS_OK}


@pytest.mark.parametrize("model", [named_in_another_order, without_parameters])
def test_the_model_takes_datas_variables_by_name_as_in_hyperas(tmp_path, model):
    """hyperas runs data()'s body above the model's and drops both signatures: scripts return
    more than model() takes, list the names in another order, or take no parameters."""
    best_run, _ = optim.minimize(model=model, data=split_data, algo=rand.suggest, max_evals=2,
                                 trials=Trials(), verbose=False)
    assert best_run == {"loss": 0}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("test_optim").experiment_id],
                              "tags.`tuning.kind` = 'trial'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


def returns_an_expression():
    x_train = np.zeros(4)
    return x_train, x_train + 1  # the second value is no variable of data()'s


def takes_positions(x_train, x_test):
    return {"loss": {{choice([1.0])}}, "status": STATUS_OK}


def returns_a_width():
    x_train, x_test = np.zeros((4, 3)), np.ones((2, 3))
    return x_train, x_test, x_train.shape[1]


def takes_a_width(x_train, x_test, width=64):
    return {"loss": {{choice([1.0])}}, "status": STATUS_OK}


def test_values_data_returns_in_the_parameters_order_go_by_position_and_a_dicts_by_key():
    x_train, x_test = Recipe.from_functions(takes_positions, returns_an_expression).load_data()
    assert (x_train == 0).all() and (x_test == 1).all()

    assert Recipe.from_functions(takes_positions, lambda: {"x_test": 1, "x_train": 0}).load_data() == (0, 1)
    width = Recipe.from_functions(takes_a_width, returns_a_width).load_data()[2]
    assert width == 3  # not its default: the values fit in order, and a name for each is not enough
    with pytest.raises(RecipeError, match=r"data\(\) returned one generator, but takes_positions"):
        Recipe.from_functions(takes_positions, lambda: (v for v in (0, 1))).load_data()
    with pytest.raises(RecipeError, match=r"data\(\) returned 3 item\(s\), but takes_positions\(x_train, "
                                          r"x_test\) takes them.*name the parameters after data"):
        Recipe.from_functions(takes_positions, lambda: (1, 2, 3)).load_data()


def with_a_metric_of_the_users_module(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense({{choice([8])}}),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=[agreement])
    net.fit(x_train[:200], y_train[:200], epochs=1, verbose=0)
    return {"loss": -net.evaluate(x_test, y_test, verbose=0)[1], "status": STATUS_OK, "model": net}


def test_custom_objects_are_the_scripts_own_and_its_users_modules_not_installed_packages():
    from sklearn.metrics import mean_squared_error

    from tuning.recipe import custom_objects

    namespace = {"__name__": "script", "mse": mean_squared_error, "f1": agreement, "keras": keras,
                 "Dense": keras.layers.Dense, "Trials": Trials}
    assert custom_objects(namespace) == {"f1": agreement, "agreement": agreement}


def test_the_best_model_reloads_with_a_metric_imported_from_the_users_own_module():
    _, best_model = optim.minimize(model=with_a_metric_of_the_users_module, data=data, algo=rand.suggest,
                                   max_evals=1, trials=Trials(), verbose=False)
    assert best_model.layers[0].units == 8
    _, _, x_test, y_test = data()
    assert "agreement" in best_model.evaluate(x_test, y_test, verbose=0, return_dict=True)


def tuning_run(script: Path, store: str, *flags: str) -> list:
    """``tuning run script`` into ``store``: the runs of the script's experiment, newest first."""
    result = CliRunner().invoke(main, ["run", str(script), "--tracking-uri", store, *flags])
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    return client.search_runs([client.get_experiment_by_name(script.stem).experiment_id],
                              order_by=["attributes.start_time DESC"])


MODULE_LEVEL_SEARCH = """
from pathlib import Path

from hyperopt import STATUS_OK, Trials, tpe

from tuning import optim


def data():
    return [1, 2], [3]


def model(x_train, x_test):
    return {"loss": {{choice([1.0, 2.0])}}, "status": STATUS_OK}


best_run, best_model = optim.minimize(model=model, data=data, algo=tpe.suggest, max_evals=3,
                                      trials=Trials())
Path("after_the_search.txt").write_text(str(best_run))
"""


@pytest.mark.parametrize("names", [("data", "model"), ("get_data", "create_model")])
def test_a_script_that_searches_at_module_level_runs_only_the_search_asked_for(tmp_path, names):
    """No ``if __name__ == "__main__":`` (a notebook saved as a script): loading the file for
    ``tuning run`` stops where its own search would start. The functions are those its search
    names, as hyperas' scripts name them."""
    script = tmp_path / "searches.py"
    data_function, model_function = names
    source = MODULE_LEVEL_SEARCH.replace("def data(", f"def {data_function}(")
    source = source.replace("def model(", f"def {model_function}(")
    script.write_text(source.replace("model=model, data=data",
                                     f"model={model_function}, data={data_function}"))
    runs = tuning_run(script, f"sqlite:///{tmp_path / 'asked.db'}", "--max-evals", "2")
    assert sorted(r.data.tags.get("tuning.kind") for r in runs) == ["study", "trial", "trial"]
    assert not (tmp_path / "after_the_search.txt").exists()
    assert not (tmp_path / "mlflow.db").exists()  # the script's own search would have used it


def test_a_scripts_own_run_around_its_search_is_not_left_behind_by_loading_the_file(tmp_path, monkeypatch):
    """MLflow's hyperopt tutorial wraps the search in ``with mlflow.start_run():``. Loading
    the file (``tuning run``, each Spark worker, ``load_best``) opens that run and stops at
    the search: the run is deleted again, not left FAILED and empty among the trials; a run
    active in the caller, or resumed through ``MLFLOW_RUN_ID``, is left as it was."""
    script = tmp_path / "wrapped.py"
    head, search = MODULE_LEVEL_SEARCH.split("best_run, best_model =")
    script.write_text(head.replace("from pathlib", "import mlflow\nfrom pathlib")
                      + 'with mlflow.start_run(run_name="search"):\n'
                      + textwrap.indent("best_run, best_model =" + search, "    "))
    store = f"sqlite:///{tmp_path / 'wrapped.db'}"
    runs = tuning_run(script, store, "--max-evals", "2")
    assert sorted(r.data.tags.get("tuning.kind") for r in runs) == ["study", "trial", "trial"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    client = MlflowClient(store)

    def deleted() -> list[str]:  # in the store's Default experiment, where the script's run goes
        return [r.info.run_name for r in client.search_runs(["0"], run_view_type=ViewType.DELETED_ONLY)]

    assert deleted() == ["search"]
    assert not (tmp_path / "mlflow.db").exists()  # it went to the store the flag names

    mlflow.set_tracking_uri(store)
    with mlflow.start_run(run_name="notebook") as outer:  # a notebook's own run, around a load
        Recipe.from_file(script)
        assert mlflow.active_run().info.run_id == outer.info.run_id
    assert client.get_run(outer.info.run_id).info.status == "FINISHED"
    project = client.create_run(runs[0].info.experiment_id, run_name="project")  # `mlflow run`'s
    monkeypatch.setenv("MLFLOW_RUN_ID", project.info.run_id)
    Recipe.from_file(script)  # the script's start_run() resumes it
    assert mlflow.active_run() is None and os.environ["MLFLOW_RUN_ID"] == project.info.run_id
    project = client.get_run(project.info.run_id)
    assert (project.info.status, project.info.lifecycle_stage) == ("RUNNING", "active")
    assert deleted() == ["search", "search"]


def test_a_line_after_the_scripts_main_block_that_uses_its_result_does_not_stop_tuning_run(tmp_path):
    """``print(best_run)`` left unindented after ``if __name__ == "__main__":`` (a notebook
    exported as a script): ``python script.py`` runs it; loading the file, where the block
    does not run, it raises NameError, and the load ends there with every function defined."""
    script = tmp_path / "trailing.py"
    head, _ = MODULE_LEVEL_SEARCH.split("best_run, best_model =")
    script.write_text(head + 'if __name__ == "__main__":\n    best_run, _ = optim.minimize(model=model, '
                      'data=data, algo=tpe.suggest, max_evals=3, trials=Trials())\n'
                      'Path("after_the_search.txt").write_text(str(best_run))\n')
    store = f"sqlite:///{tmp_path / 'trailing.db'}"
    runs = tuning_run(script, store, "--max-evals", "2")
    assert sorted(r.data.tags.get("tuning.kind") for r in runs) == ["study", "trial", "trial"]
    assert not (tmp_path / "after_the_search.txt").exists()

    source = script.read_text()
    for other, error in [("undefined_name\n", "NameError: name 'undefined_name' is not defined"),
                         ("SCALE = 1 / 0\n", "ZeroDivisionError: division by zero")]:
        before = source.replace("def data():", f"{other}\n\ndef data():")  # the recipe's own line
        # after the block, but not for want of what it makes:
        after = source.replace('Path("after_the_search.txt").write_text(str(best_run))\n', other)
        for text in (before, after):
            script.write_text(text)
            result = CliRunner().invoke(main, ["run", str(script), "--tracking-uri", store])
            assert result.exit_code == 1 and error in result.output, result.output


def test_tuning_run_searches_as_the_scripts_own_call_asks_unless_flags_say_otherwise(tmp_path):
    """The script's ``optim.minimize(algo=rand.suggest, max_evals=3, rseed=7)`` is what
    ``python script.py`` runs: ``tuning run`` runs the same search, and its flags win."""
    script = tmp_path / "asks.py"
    source = MODULE_LEVEL_SEARCH.replace("from hyperopt import", "from hyperopt import rand,")
    script.write_text(source.replace("algo=tpe.suggest,", "algo=rand.suggest, rseed=7,"))
    store = f"sqlite:///{tmp_path / 'asks.db'}"

    def study(*flags: str) -> tuple[dict, int]:
        runs = tuning_run(script, store, *flags)
        parent = next(r for r in runs if r.data.tags["tuning.kind"] == "study")
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        return parent.data.params, len(trials)

    params, trials = study()
    assert (params["algo"], params["seed"], trials) == ("rand", "7", 3)
    params, trials = study("--max-evals", "2", "--algo", "tpe", "--seed", "3")
    assert (params["algo"], params["seed"], trials) == ("tpe", "3", 2)


NOTEBOOK_CELL = """
def cell_data():
    return [1], [2]


def create_model(x_train, x_test):
    return {"loss": {{uniform(0, 1)}}, "status": "ok"}
"""


def test_a_notebooks_searches_go_to_an_experiment_named_after_the_notebook(tmp_path, monkeypatch):
    """Code in a notebook's cells has no file: its experiment is hyperas' ``notebook_name=``,
    else the notebook Jupyter names in ``JPY_SESSION_NAME``, not the model function's name."""
    import linecache

    cell = "/tmp/ipykernel_4242/1234567.py"  # where IPython says a cell's code is
    lines = NOTEBOOK_CELL.splitlines(True)
    monkeypatch.setitem(linecache.cache, cell, (len(NOTEBOOK_CELL), None, lines, cell))
    namespace: dict = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, cell, "exec"), namespace)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)

    def search(**notebook: str) -> None:
        optim.minimize(model=namespace["create_model"], data=namespace["cell_data"], algo=rand.suggest,
                       max_evals=1, trials=Trials(), verbose=False, **notebook)

    search(notebook_name="hyperas_search")
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/work/digits cnn.ipynb")
    search()
    monkeypatch.delenv("JPY_SESSION_NAME")
    search()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    names = {e.name for e in client.search_experiments()} - {"Default"}
    assert names == {"hyperas_search", "digits cnn", "create_model"}


OLDER_HYPERAS = """
from hyperopt import STATUS_OK
from hyperas.distributions import choice, conditional, uniformint


def data():
    return [1, 2], [3]


def model(x_train, x_test):
    if conditional({{choice(['three', 'four'])}}) == 'four':
        return {"loss": 0.0, "status": STATUS_OK}
    return {"loss": float({{uniformint(1, 3)}}), "status": STATUS_OK}
"""


def test_tuning_run_gives_scripts_the_names_hyperas_dropped_or_added_after_its_last_release(
        tmp_path, monkeypatch):
    """``conditional`` (hyperas 0.4.0's README, removed in 2018) and ``uniformint`` (hyperas'
    master, not on the package index) import from ``hyperas.distributions`` as they did."""
    import hyperas.distributions

    for name in ("conditional", "uniformint"):  # as a process that did not import tuning.optim
        monkeypatch.delattr(hyperas.distributions, name, raising=False)
    script = tmp_path / "older_hyperas.py"
    script.write_text(OLDER_HYPERAS)
    runs = [r for r in tuning_run(script, f"sqlite:///{tmp_path / 'older.db'}", "--max-evals", "4")
            if r.data.tags["tuning.kind"] == "trial"]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # hyperas' names: the call each marker is the first argument of
        assert run.data.params["conditional"] in {"three", "four"}
        assert run.data.params["float"] in {"1", "2", "3"}
        assert run.data.metrics["hyperopt_loss"] == (
            0.0 if run.data.params["conditional"] == "four" else float(run.data.params["float"]))


def always_fails(x_train, y_train, x_test, y_test):
    units = {{choice([4, 8])}}
    return units / 0


def test_when_every_trial_fails_the_users_own_exception_is_raised():
    with pytest.raises(ZeroDivisionError) as raised:
        optim.minimize(model=always_fails, data=data, algo=rand.suggest, max_evals=2, trials=Trials(),
                       verbose=False)
    frames = [f for f in traceback.extract_tb(raised.value.__traceback__) if f.name == "always_fails"]
    assert frames and frames[-1].line == "return units / 0"  # the traceback points at the user's line


@pytest.mark.slow
def test_the_store_and_experiment_set_with_mlflows_own_calls_are_used_by_every_search(tmp_path):
    store = f"sqlite:///{tmp_path}/chosen.db"
    mlflow.set_tracking_uri(store)  # as the tutorial (or a hosted service's init()) does
    mlflow.set_experiment("MNIST hyperas")
    for _ in range(2):  # a second search in the same process goes to the same place
        optim.minimize(model=create_model, data=data, algo=rand.suggest, max_evals=1, trials=Trials(),
                       verbose=False)
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("test_optim") is None
    assert mlflow.get_tracking_uri() == store and os.environ["MLFLOW_TRACKING_URI"] == store
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("MNIST hyperas").experiment_id])
    studies = [r for r in runs if r.data.tags["tuning.kind"] == "study"]
    assert len(studies) == 2 and len(runs) == 4  # two studies, each with its trial

    # An explicit argument wins, and leaves the user's setting as it was.
    other = f"sqlite:///{tmp_path}/other.db"
    tuning.minimize(create_model, data, algo="rand", max_evals=1, tracking_uri=other, experiment="x",
                    progress=False)
    client = MlflowClient(other)
    assert len(client.search_runs([client.get_experiment_by_name("x").experiment_id])) == 2
    assert mlflow.get_tracking_uri() == store


@pytest.mark.slow
def test_a_variable_set_store_survives_a_second_search(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path}/from_env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    for _ in range(2):
        tuning.minimize(create_model, data, algo="rand", max_evals=1, progress=False, log_model=False)
    assert os.environ["MLFLOW_TRACKING_URI"] == store
    client = MlflowClient(store)
    assert len(client.search_runs([client.get_experiment_by_name("from_env").experiment_id])) == 4
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("test_optim") is None


def test_a_search_inside_an_active_run_nests_under_it(tmp_path):
    store = f"sqlite:///{tmp_path}/nb.db"
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("notebook")
    with mlflow.start_run() as outer:
        study = tuning.minimize(tutorial_style, data, algo="rand", max_evals=2, progress=False)
        assert mlflow.active_run().info.run_id == outer.info.run_id  # the user's run is theirs again
    client = MlflowClient(store)
    assert client.get_run(study.run_id).data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert study.experiment == "notebook"
    for trial in study.trials:  # the model's own mlflow.start_run() went into the trial's run
        run = client.get_run(trial.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["by_hand"] == 1.0
    assert client.get_run(outer.info.run_id).info.status == "FINISHED"


def tutorial_style(x_train, y_train, x_test, y_test):
    units = {{choice([4, 8])}}
    with mlflow.start_run():
        mlflow.log_metric("by_hand", 1.0)
    return {"loss": -units, "status": STATUS_OK}


def picks_a_layer(x_train, y_train, x_test, y_test):
    # Built once with the space, as hyperas builds it, a layer would clash by name with the
    # Activation below after clear_session(), and carry its weights into the next trial.
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(8), keras.layers.Activation("relu"),
                            {{choice([keras.layers.Activation("linear"), keras.layers.Dropout(0.5)])}},
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer={{choice(["adam", keras.optimizers.SGD(learning_rate=0.1)])}},
                loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train[:200], y_train[:200], epochs=1, verbose=0)
    BUILT.append((net.layers[2], net.optimizer))
    return net


BUILT: list = []


@pytest.mark.slow
def test_a_choice_of_objects_builds_them_afresh_for_every_trial(tmp_path):
    trials = Trials()
    best_run, _, space = optim.minimize(model=picks_a_layer, data=data, algo=rand.suggest, max_evals=6,
                                        trials=trials, verbose=False, return_space=True)
    assert all(r["status"] == "ok" for r in trials.results)
    layers, optimizers = zip(*BUILT, strict=True)
    assert len({id(layer) for layer in layers}) == 6 and len({id(o) for o in optimizers}) == 6
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("test_optim").experiment_id],
                              "tags.`tuning.kind` = 'trial'")
    # Params and tags hold the option as written, never an object's repr.
    assert {r.data.params["choice"] for r in runs} <= {'keras.layers.Activation("linear")',
                                                          "keras.layers.Dropout(0.5)"}
    assert {r.data.tags["optimizer"] for r in runs} <= {"adam", "keras.optimizers.SGD(learning_rate=0.1)"}
    assert len({r.data.params["choice"] for r in runs} | {r.data.params["optimizer"] for r in runs}) >= 3


TUTORIAL_SCRIPT = Path(__file__).parent / "data" / "mlflow_tutorial.py"


@pytest.mark.slow
def test_the_mlflow_tutorial_script_logs_to_the_server_and_experiment_it_chose(tmp_path, mlflow_server):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, str(TUTORIAL_SCRIPT), mlflow_server], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # nothing in ./mlflow.db: all of it went to the server
    assert "best model: Sequential" in run.stdout
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("MNIST hyperas")
    runs = client.search_runs([experiment.experiment_id])
    (study,) = [r for r in runs if r.data.tags["tuning.kind"] == "study"]
    trials = [r for r in runs if r.data.tags["tuning.kind"] == "trial"]
    assert len(runs) == 3 and study.info.status == "FINISHED"
    for trial in trials:  # the tutorial's own calls landed in the trial's run, beside ours
        assert trial.info.status == "FINISHED"
        assert trial.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert trial.data.tags["f1"] == trial.data.params["f1"]  # its set_tags, our params
        assert trial.data.metrics["accuracy"] == pytest.approx(-trial.data.metrics["hyperopt_loss"])
        (model,) = trial.outputs.model_outputs  # its log_model; ours is not logged twice
        assert client.get_logged_model(model.model_id).name == "model"
        mlflow.set_tracking_uri(mlflow_server)
        assert mlflow.keras.load_model(f"runs:/{trial.info.run_id}/model").count_params() > 0


AUTOLOG_SCRIPT = Path(__file__).parent / "data" / "mlflow_autolog.py"


@pytest.mark.slow
def test_a_script_with_mlflow_keras_autolog_runs_and_autolog_records_into_the_trials(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = subprocess.run([sys.executable, str(AUTOLOG_SCRIPT), store], cwd=tmp_path,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]  # was: fit() got multiple values for 'callbacks'
    assert "best model: Sequential" in run.stdout
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("autologged").experiment_id])
    (study,) = [r for r in runs if r.data.tags.get("tuning.kind") == "study"]
    (trial,) = [r for r in runs if r.data.tags.get("tuning.kind") == "trial"]  # one: its model costs ~15 s
    assert len(runs) == 2 and study.info.status == "FINISHED"  # autolog opened no runs of its own
    assert trial.info.status == "FINISHED"
    assert trial.data.params["epochs"] == "2" and trial.data.params["optimizer_name"] == "adam"  # autolog's
    assert trial.data.tags["Dense"] == trial.data.params["Dense"]  # ours
    assert trial.data.metrics["hyperopt_loss"] == pytest.approx(-trial.data.metrics["val_accuracy"])
    assert {m.step for m in client.get_metric_history(trial.info.run_id, "loss")} == {0, 1}
    (model,) = trial.outputs.model_outputs  # autolog's model; ours is not logged twice
    mlflow.set_tracking_uri(store)
    assert mlflow.keras.load_model(f"models:/{model.model_id}").count_params() > 0


class QueueTrials(Trials):
    """As hyperopt's MongoTrials (and SparkTrials) are: trials for hyperopt's own workers."""

    asynchronous = True


def test_trials_for_hyperopts_own_workers_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(tuning.ConfigurationError, match="QueueTrials hands trials to hyperopt's own workers"):
        optim.minimize(model=create_model, data=data, algo=rand.suggest, max_evals=1, trials=QueueTrials(),
                       verbose=False)
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("test_optim") is None
