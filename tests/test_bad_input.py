"""Bad input: one readable line, exit code 1, no traceback; credentials never recorded."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from tests.conftest import free_port, start_server, stop_server
from tests.test_cli import TUNING
from tuning.cli import main

TINY_MODEL = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(<<choice([8, 16])>>),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=OPTIMIZER, loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=1, verbose=0)
    return net
'''


@pytest.mark.parametrize(("uri", "message"), [
    ("htp://127.0.0.1:5000", "unsupported tracking URI 'htp://127.0.0.1:5000': use http://host:port"),
    ("localhost:5000", "unsupported tracking URI 'localhost:5000'"),
    ("runs.db", "the tracking URI 'runs.db' is a folder store: MLflow 3 tracks in a database or a server; "
                "use sqlite:///"),
    ("file:///srv/mlruns", "is a folder store: MLflow 3 tracks in a database or a server; use "
                           "sqlite:////srv/mlflow.db (`mlflow migrate-filestore` moves a folder's runs into "
                           "it), or set MLFLOW_ALLOW_FILE_STORE=true"),
    ("sqlite://runs.db", "has two slashes: write sqlite:///relative/path.db or sqlite:////absolute/path.db"),
])
def test_malformed_tracking_uri(write_recipe, uri, message):
    result = CliRunner().invoke(main, ["run", str(write_recipe()), "--tracking-uri", uri])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_a_model_that_does_not_compile_fails_its_trials_with_keras_words(write_recipe, store):
    recipe = write_recipe(model=TINY_MODEL, extra='OPTIMIZER = "no-such-optimizer"\n')
    result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--max-evals", "2"])
    assert result.exit_code == 1
    assert "all 2 trials failed; first error: ValueError: Could not interpret optimizer identifier" \
        in result.output


def test_a_recipe_without_data(write_recipe, store):
    recipe = write_recipe(header="import keras\n", model=TINY_MODEL)
    result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store])
    assert result.exit_code == 1 and "data() missing (functions found: model)" in result.output


@pytest.mark.slow
def test_wrong_credentials_are_named_and_right_ones_never_recorded(write_recipe, tmp_path):
    password = "s3cret-Pa55word-xyz"
    folder = tmp_path / "auth"
    folder.mkdir()
    port = free_port()
    server = start_server(folder, port, "--app-name", "basic-auth",
                          env={"MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key",
                               "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                               "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(folder))})
    url = f"http://127.0.0.1:{port}"
    recipe = write_recipe(model=TINY_MODEL, extra='OPTIMIZER = "adam"\nEXPERIMENT = "authed"\n')
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "admin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        wrong = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", url],
                               env={**env, "MLFLOW_TRACKING_PASSWORD": "wrong"}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert wrong.returncode == 1
        assert f"error: the tracking server at {url} refused the credentials" in wrong.stderr
        assert "Traceback" not in wrong.stderr

        right = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", url, "--max-evals", "2"],
                               env={**env, "MLFLOW_TRACKING_PASSWORD": password}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert right.returncode == 0, right.stderr
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", password
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("authed")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 3
        for run in runs:
            recorded = {**run.data.params, **run.data.tags}
            assert not any(password in str(v) for v in recorded.values())
            local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
            for file in local.rglob("*"):
                if file.is_file():
                    assert password.encode() not in file.read_bytes(), file
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        stop_server(server)


def _auth_config(folder: Path) -> Path:
    """basic-auth's config: its user database inside the test's folder."""
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
                    "admin_username = admin\n")
    return path


def test_data_that_does_not_fit_the_model_is_one_error_before_any_trial(write_recipe, store):
    recipe = write_recipe(header="import keras\n\ndef data():\n    return 1, 2, 3\n", model=TINY_MODEL,
                          extra='OPTIMIZER = "adam"\n')
    result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("data() returned 3 item(s), but model(x_train, y_train, x_test, y_test) takes them as its "
            "arguments") in result.output
    assert MlflowClient(store).get_experiment_by_name("recipe") is None  # nothing was started


def test_a_model_that_returns_nothing_stops_the_study_at_its_first_trial(write_recipe, store):
    recipe = write_recipe(model=TINY_MODEL.replace("    return net\n", "    net = net  # no return\n"),
                          extra='OPTIMIZER = "adam"\n')
    result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--max-evals", "5"])
    assert result.exit_code == 1 and "model() returned None: end it with `return model`" in result.output
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("recipe").experiment_id])
    statuses = sorted((r.data.tags["tuning.kind"], r.info.status) for r in runs)
    assert statuses == [("study", "FAILED"), ("trial", "FAILED")]  # one trial, not five


SIGNAL_IN_START_UP = '''
import gc, os, signal, time

_sent = []


def _collect(phase, info):
    # SIGTERM while the garbage collector runs a callback (TensorFlow registers some, and
    # start-up collects often): Python drops an exception raised there.
    if phase == "start" and not _sent:
        _sent.append(True)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            # Until the handler runs here, inside the callback: its exception ends this loop.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.01)
        except KeyboardInterrupt:
            open("raised_in_gc_callback", "w").close()  # which Python drops
            raise


gc.callbacks.append(_collect)
gc.collect()
gc.callbacks.remove(_collect)
'''


@pytest.mark.slow
def test_sigterm_during_start_up_stops_the_study(write_recipe, store, tmp_path):
    recipe = write_recipe(model=TINY_MODEL, extra='OPTIMIZER = "adam"\n' + SIGNAL_IN_START_UP)
    run = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", store, "--max-evals", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert (tmp_path / "raised_in_gc_callback").exists()  # the signal's exception was dropped
    assert "Exception ignored" not in run.stderr  # and kept quietly
    assert run.returncode == 130 and "interrupted" in run.stderr
    assert MlflowClient(store).get_experiment_by_name("recipe") is None  # no trial trained


def test_a_negative_seed_is_refused_before_a_run_starts(write_recipe, store):
    result = CliRunner().invoke(main, ["run", str(write_recipe()), "--tracking-uri", store, "--seed", "-1"])
    assert result.exit_code == 1 and "seed must be 0 or more, got -1" in result.output
    assert "Traceback" not in result.output
    assert MlflowClient(store).get_experiment_by_name("recipe") is None


def test_an_artifact_location_that_cannot_be_written_is_one_error_and_no_outage(write_recipe, store,
                                                                                tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    artifacts = tmp_path / "a-file" / "artifacts"
    MlflowClient(store).create_experiment("unwritable", artifact_location=str(artifacts))
    result = CliRunner().invoke(main, ["run", str(write_recipe()), "--tracking-uri", store,
                                       "--experiment", "unwritable"])  # with the default patience
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unreachable" not in result.output
    assert (f"cannot use {artifacts}: Not a directory (is the experiment's artifact location "
            "a folder this process may write?)") in result.output
    client = MlflowClient(store)
    [study] = client.search_runs([client.get_experiment_by_name("unwritable").experiment_id])
    assert study.info.status == "FAILED" and "Not a directory" in study.data.tags["tuning.error"]


def test_resuming_after_a_marker_was_added_names_it_and_keeps_the_study(write_recipe, store):
    recipe = write_recipe(model=TINY_MODEL, extra='OPTIMIZER = "adam"\n')
    first = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--max-evals", "1"])
    assert first.exit_code == 0
    client = MlflowClient(store)
    [study] = client.search_runs([client.get_experiment_by_name("recipe").experiment_id],
                                 "tags.`tuning.kind` = 'study'")
    client.set_terminated(study.info.run_id, "KILLED")  # as Ctrl-C leaves it
    marker = 'optimizer=<<choice(["adam", "sgd"])>>'
    recipe.write_text(recipe.read_text().replace("optimizer=OPTIMIZER", marker))
    result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"the search space changed since study {study.info.run_id} started (optimizer added: "
            "choice(['adam', 'sgd'])), so its trials cannot be resumed with it: undo the change to "
            "resume, or run without --resume to start a new study") in result.output
    runs = client.search_runs([study.info.experiment_id])
    assert len(runs) == 2 and client.get_run(study.info.run_id).info.status == "KILLED"


def test_a_recipe_in_another_encoding_is_read_as_its_coding_line_says(tmp_path):
    source = 'def data():\n    return "réseau", 1\n\n\ndef model(x, y):\n    return <<choice([1, 2])>>\n'
    named = tmp_path / "latin.py"
    named.write_bytes(("# -*- coding: latin-1 -*-\n" + source).encode("latin-1"))
    result = CliRunner().invoke(main, ["space", str(named)])
    assert result.exit_code == 0 and "choice([1, 2])" in result.output

    unnamed = tmp_path / "unnamed.py"
    unnamed.write_bytes(source.encode("latin-1"))
    result = CliRunner().invoke(main, ["space", str(unnamed)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{unnamed}: cannot decode the recipe ('utf-8' codec can't decode byte 0xe9" in result.output
    assert ("save it as UTF-8, or name its encoding in a first-line comment such as "
            "# -*- coding: latin-1 -*-") in result.output


def test_a_notebook_given_as_a_recipe_says_how_to_run_it(tmp_path):
    notebook = tmp_path / "search.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {"scrolled": False},
                                               "source": ["def model():\n", "    return {{choice([1])}}\n"],
                                               "outputs": [], "execution_count": None}],
                                    "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    result = CliRunner().invoke(main, ["run", str(notebook), "--tracking-uri", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{notebook}: a notebook is not a recipe file: run its cells in Jupyter with `from tuning "
            "import optim`") in result.output
    assert "jupyter nbconvert --to script search.ipynb" in result.output
    assert not (tmp_path / "s.db").exists()


def test_a_marker_inside_an_f_string_says_to_name_it_first(write_recipe):
    recipe = write_recipe(model='def model(x_train, y_train, x_test, y_test):\n'
                                '    return f"dense_{<<choice([1, 2])>>}"\n')
    result = CliRunner().invoke(main, ["space", str(recipe)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("a marker inside an f-string is not read: give it a name first, units = <<choice([8, 16])>>, "
            "and write {units} in the f-string") in result.output


def test_resume_with_nothing_to_resume_says_so_and_starts_a_study(tmp_path, store, caplog):
    recipe = tmp_path / "fresh.py"
    recipe.write_text('def data():\n    return 1, 2\n\n\ndef model(a, b):\n'
                      '    return {"loss": <<uniform(0, 1)>>, "status": "ok"}\n')
    result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--max-evals", "1",
                                       "--resume"])
    assert result.exit_code == 0
    # (on stderr, through the "tuning" logger, which pytest captures before the terminal)
    assert f"nothing to resume: no unfinished study of {recipe} in experiment 'fresh'; a new one starts" \
        in caplog.text
    client = MlflowClient(store)
    assert len(client.search_runs([client.get_experiment_by_name("fresh").experiment_id])) == 2


def test_a_study_whose_choice_holds_functions_resumes(tmp_path, store):
    """Their text holds addresses (<function double at 0x…>) that differ in every process."""
    recipe = tmp_path / "functions.py"
    recipe.write_text('def double(v):\n    return 2 * v\n\n\ndef data():\n    return 1, 2\n\n\n'
                      'def model(a, b):\n    act = <<choice([double, abs])>>\n'
                      '    return {"loss": act(-1.0), "status": "ok"}\n')
    for flags in ([], ["--resume"]):
        result = CliRunner().invoke(main, ["run", str(recipe), "--tracking-uri", store, "--max-evals", "2",
                                           *flags])
        assert result.exit_code == 0, result.output
        client = MlflowClient(store)
        [study] = client.search_runs([client.get_experiment_by_name("functions").experiment_id],
                                     "tags.`tuning.kind` = 'study'")
        client.set_terminated(study.info.run_id, "KILLED")  # as Ctrl-C leaves it
    assert client.get_run(study.info.run_id).data.tags["tuning.resumes"] == "1"
