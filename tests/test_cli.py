"""The ``tuning`` command: what a user sees, its exit codes, the runs it leaves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import tuning
from tests.conftest import free_port
from tuning.cli import main

TUNING = str(Path(sys.executable).parent / "tuning")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_space_prints_names_distributions_lines_and_grid_size(write_recipe):
    result = invoke("space", str(write_recipe()))
    assert result.exit_code == 0, result.output
    for expected in ("Dense", "quniform(8, 32, 8) → int", "8, 16, 24, 32", "activation",
                     "choice(['relu', 'tanh'])", "Dropout", "continuous", "batch_size",
                     "grid size: unbounded"):
        assert expected in result.output
    discrete = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        return Dense(<<choice([1, 2, 3])>>, batch_size=<<randint(2, 6)>>)
    ''', name="discrete.py")
    assert "grid size: 12" in invoke("space", str(discrete)).output


@pytest.mark.parametrize(("model", "message"), [
    ("def model(x_train, y_train, x_test, y_test):\n    return Dense(<<unifrom(0, 1)>>)\n",
     "recipe.py:{line}: unknown distribution 'unifrom' in <<unifrom(0, 1)>>: did you mean 'uniform'?"),
    ("def model(x_train, y_train, x_test, y_test):\n    return Dense(<<uniform(1, 0)>>)\n",
     "recipe.py:{line}: Dense: low must be below high, got low=1, high=0"),
    ("def build(x_train, y_train, x_test, y_test):\n    return 1\n",
     "model() missing (functions found: build, data)"),
    ("def model(x_train, y_train, x_test, y_test):\n    return 1\n",
     "no hyperparameters to tune"),
])
def test_bad_recipes_give_one_clear_line_and_exit_1(write_recipe, store, model, message):
    recipe = write_recipe(model=model)
    line = len(recipe.read_text().splitlines())
    result = invoke("run", str(recipe), "--tracking-uri", store)
    assert result.exit_code == 1
    assert message.format(line=line) in result.output
    assert "Traceback" not in result.output
    debug = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--debug"])
    assert debug.exit_code == 1 and debug.exception is not None  # --debug raises instead


def test_data_that_raises_names_the_line(write_recipe, store):
    recipe = write_recipe(header="def data():\n    return 1 / 0\n", model='''
    def model(x_train, y_train, x_test, y_test):
        return <<uniform(0, 1)>>
    ''')
    result = invoke("run", str(recipe), "--tracking-uri", store)
    assert result.exit_code == 1
    assert "data() raised ZeroDivisionError: division by zero" in result.output
    assert f'File "{recipe}", line 2, in data' in result.output
    assert MlflowClient(store).search_runs(["0"]) == []  # nothing started before the data loaded


def test_unreachable_server_fails_before_training(write_recipe):
    port = free_port()
    result = invoke("run", str(write_recipe()), "--tracking-uri", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"cannot reach the tracking server at http://127.0.0.1:{port}" in result.output
    assert "mlflow server --host 127.0.0.1 --port 5000" in result.output


@pytest.mark.parametrize("command", [["best", "x"], ["report", "x"], ["best", "x", "--register", "m"]])
def test_questions_to_an_unreachable_server_fail_at_once(command):
    url = f"http://127.0.0.1:{free_port()}"  # (not after --patience of retries)
    result = invoke(*command, "--tracking-uri", url)
    assert result.exit_code == 1
    assert f"cannot reach the tracking server at {url}" in result.output


def test_deleted_experiment_says_how_to_restore_it(write_recipe, store):
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("gone"))
    result = invoke("run", str(write_recipe()), "--tracking-uri", store, "--experiment", "gone")
    assert result.exit_code == 1
    assert "experiment 'gone' was deleted; restore it with `mlflow experiments restore" in result.output


def test_all_trials_failing_exits_1_with_the_first_error(write_recipe, store):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        raise ValueError("bad layer " + <<choice(["a"])>>)
    ''')
    result = invoke("run", str(recipe), "--tracking-uri", store, "--max-evals", "2")
    assert result.exit_code == 1
    assert "all 2 trials failed; first error: ValueError: bad layer a" in result.output
    assert "error.txt" in result.output


def test_best_on_a_missing_experiment(store):
    result = invoke("best", "nothing", "--tracking-uri", store)
    assert result.exit_code == 1 and "no experiment 'nothing'" in result.output


@pytest.mark.parametrize("name", ["keras", "six"])
def test_a_recipe_named_like_an_installed_module_names_the_clash(write_recipe, store, name):
    recipe = write_recipe(name=f"{name}.py")
    result = invoke("run", str(recipe), "--tracking-uri", store)
    assert result.exit_code == 1
    assert f"{name}.py: the recipe's file name shadows the installed module '{name}'" in result.output
    assert f"Rename the file, e.g. to {name}_recipe.py" in result.output
    assert str(recipe.parent) not in sys.path  # nothing else in this process imports the recipe


@pytest.mark.slow
def test_best_and_report_take_the_experiment_as_an_option_too(write_recipe, store, tmp_path, monkeypatch):
    tuning.minimize(write_recipe(extra="EXPERIMENT = 'named'\n"), max_evals=2, seed=1, tracking_uri=store,
                    progress=False)
    positional = invoke("best", "named", "--tracking-uri", store)
    optional = invoke("best", "--experiment", "named", "--tracking-uri", store)
    assert positional.exit_code == optional.exit_code == 0
    assert optional.output == positional.output and "tuning.load_best(" in optional.output
    report = invoke("report", "--experiment", "named", "--tracking-uri", store, "--out", str(tmp_path / "r"))
    assert report.exit_code == 0 and (tmp_path / "r" / "report.html").is_file()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "named")  # as for `tuning run`, MLflow's own variable
    assert invoke("best", "--tracking-uri", store).output == positional.output
    assert "no experiment 'other'" in invoke("best", "other", "--tracking-uri", store).output  # given wins
    clash = CliRunner().invoke(main, ["best", "named", "--experiment", "other", "--tracking-uri", store])
    assert clash.exit_code == 2 and "two experiments given: 'named' and --experiment 'other'" in clash.output
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    none = CliRunner().invoke(main, ["best", "--tracking-uri", store])
    assert none.exit_code == 2
    assert "name the experiment: tuning best NAME (or --experiment NAME)" in none.output


@pytest.mark.slow
def test_run_then_best_in_a_fresh_folder_with_the_default_store(write_recipe, tmp_path):
    recipe = write_recipe(name="digits.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([TUNING, "run", str(recipe), "--max-evals", "2", "--seed", "5"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "mlflow.db").exists()  # MLflow's own default, so `mlflow ui` here shows it
    assert "study digits" in run.stdout and "2 trials finished, 0 failed" in run.stdout
    assert "open the UI:      tuning ui\n" in run.stdout  # this folder's store is its default
    assert "oneDNN" not in run.stderr and "absl" not in run.stderr  # TensorFlow's start-up chatter
    best_id = re.search(r"tuning.load_best\('([0-9a-f]{32})'\)", run.stdout).group(1)
    pasted = re.search(r"reload the model: (.*)", run.stdout).group(1)  # works as printed
    loaded = subprocess.run([sys.executable, "-c", pasted + "; print(model.count_params())"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and int(loaded.stdout.split()[-1]) > 0, loaded.stderr
    assert "Downloading artifacts" not in loaded.stderr and "oneDNN" not in loaded.stderr  # quiet
    # Progress lines and the summary speak of the objective, not of hyperopt's negated loss.
    assert re.search(r"trial 1: accuracy 0\.\d+ ▲", run.stderr) and "trial 2: accuracy" in run.stderr
    assert re.search(r"│ accuracy ▲ +│ 0\.\d+ ", run.stdout) and "hyperopt" not in run.stdout

    best = subprocess.run([TUNING, "best", "digits", "--top", "5"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    trials = client.search_runs([client.get_experiment_by_name("digits").experiment_id],
                                "tags.`tuning.kind` = 'trial'", order_by=["metrics.hyperopt_loss ASC"])
    assert len(trials) == 2
    first, second = (best.stdout.index(r.info.run_id) for r in trials)
    assert f"accuracy {-trials[0].data.metrics['hyperopt_loss']:.4g} ▲" in best.stdout
    assert first < second  # sorted by the objective, best first
    assert f"tuning.load_best('{trials[0].info.run_id}')" in best.stdout
    assert best_id == trials[0].info.run_id  # the reload command printed by `run` names the best


def test_space_of_literal_markers_imports_no_keras_and_shows_log_ranges(write_recipe):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        return Dense(<<choice([1, 2])>>, rate=<<loguniform(-7, -3)>>)
    ''')  # the recipe itself imports keras at its top
    code = ("import sys\nfrom tuning.cli import main\ntry:\n    main(['space', sys.argv[1]])\n"
            "except SystemExit as end:\n    assert not end.code, end.code\nprint('keras' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "e^-7 … e^-3 ≈ 0.000912 … 0.0498" in shown.stdout
    assert shown.stdout.strip().endswith("False")  # read without running the recipe's imports

    named = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        return Dense(<<choice(SIZES)>>)
    ''', extra="SIZES = [4, 8]\n", name="named.py")
    assert "4, 8" in invoke("space", str(named)).output  # names of the recipe: it is run
