"""Parallel trials on a real local Spark, logging to a real server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

import tuning
from tests.conftest import DIGITS_DATA, DIGITS_MODEL
from tests.test_cli import TUNING
from tests.test_search import LEARNING_RATE_MODEL
from tuning.pruners import MedianPruner
from tuning.trial import TrialStatus

pytestmark = pytest.mark.slow

# The trial records, in its own run, the thread limit its Spark worker was started with.
THREADS = '''
import os

import mlflow
'''

MODEL = '''
def model(x_train, y_train, x_test, y_test):
    mlflow.log_param("worker_threads", os.environ.get("TF_NUM_INTRAOP_THREADS"))
    net = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(<<quniform(8, 32, 8)>>, activation="relu"),
        keras.layers.Dropout(<<uniform(0, 0.5)>>),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, validation_data=(x_test, y_test))
    mlflow.log_metric("test_loss", net.evaluate(x_test, y_test, verbose=0)[0])
    time.sleep(SLEEP)
    return net
'''


@pytest.fixture
def recipe(write_recipe):
    def make(experiment: str, sleep: float = 0.0) -> Path:
        return write_recipe(MODEL, epochs=2, extra=THREADS + f"import time\nEXPERIMENT = {experiment!r}\n"
                                                  f"SLEEP = {sleep}\n")
    return make


def study_runs(server: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])
    kind = lambda k: [r for r in runs if r.data.tags.get("tuning.kind") == k]  # noqa: E731
    return kind("study"), kind("trial")


def test_parallel_trials_log_like_serial_ones_and_resume(mlflow_server, recipe):
    path = recipe("parallel")
    first = tuning.minimize(path, max_evals=2, seed=3, parallelism=2, tracking_uri=mlflow_server,
                            progress=False)
    assert [t.status.value for t in first.trials] == ["ok", "ok"]
    MlflowClient(mlflow_server).update_run(first.run_id, status="KILLED")  # as after a crash

    study = tuning.minimize(path, max_evals=4, parallelism=2, tracking_uri=mlflow_server,
                            progress=False, resume=True)
    (parent,), trials = study_runs(mlflow_server, "parallel")
    client = MlflowClient(mlflow_server)
    assert study.run_id == parent.info.run_id and parent.info.status == "FINISHED"
    assert parent.data.params["parallelism"] == "2" and parent.data.tags["tuning.resumes"] == "1"
    assert sorted(int(r.data.tags["tuning.trial"]) for r in trials) == [1, 2, 3, 4]
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["Dense"] == run.data.params["Dense"]
        assert set(json.loads(run.data.tags["tuning.hyperopt_vals"])) == {"Dense", "Dropout"}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
        assert run.data.metrics["hyperopt_loss"] == pytest.approx(-run.data.metrics["test_accuracy"])
        assert run.outputs.model_outputs, "the trial's model is logged"
        # 2 cores shared by 2 trials at a time: one thread each
        assert run.data.params["worker_threads"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert parent.data.tags["tuning.best_run_id"] == study.best.run_id
    loaded = tuning.load_best("parallel", tracking_uri=mlflow_server)
    assert loaded.count_params() > 0


def test_parallel_grid_runs_each_point_once_then_stops(mlflow_server, write_recipe):
    path = write_recipe(MODEL.replace("<<uniform(0, 0.5)>>", "0.1"), epochs=1,
                        extra=THREADS + "import time\nEXPERIMENT = 'grid'\nSLEEP = 0\n")
    study = tuning.minimize(path, algo="grid", parallelism=2, tracking_uri=mlflow_server, progress=False)
    (parent,), trials = study_runs(mlflow_server, "grid")
    assert sorted(int(r.data.params["Dense"]) for r in trials) == [8, 16, 24, 32]
    assert sorted(int(r.data.tags["tuning.trial"]) for r in trials) == [1, 2, 3, 4]
    assert all(r.info.status == "FINISHED" for r in trials)
    assert parent.data.tags["tuning.stop_reason"] == "grid_done"
    assert study.stop_reason.value == "grid_done"


CRASHING = '''
def model(x_train, y_train, x_test, y_test):
    units = <<choice([8, 16])>>
    if units == 8:
        os._exit(3)  # the Python worker dies, as when the kernel kills it for memory
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(units, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=32)
    return net
'''


def test_a_dead_spark_worker_fails_its_trial_and_the_study_goes_on(mlflow_server, write_recipe):
    path = write_recipe(CRASHING, extra="import os\nEXPERIMENT = 'crash'\n")
    study = tuning.minimize(path, algo="grid", parallelism=2, tracking_uri=mlflow_server, progress=False)
    crashed, fine = sorted(study.trials, key=lambda t: t.number)
    assert crashed.status.value == "failed" and "the Spark task failed" in crashed.error
    assert fine.status.value == "ok" and study.best.number == fine.number
    (parent,), trials = study_runs(mlflow_server, "crash")
    assert parent.info.status == "FINISHED"
    status = {r.data.params["units"]: r.info.status for r in trials}
    assert status == {"8": "FAILED", "16": "FINISHED"}  # none left RUNNING
    dead = next(r for r in trials if r.data.params["units"] == "8")
    assert crashed.run_id == dead.info.run_id and dead.data.tags["tuning.error"] == crashed.error


def test_executors_run_the_recipe_source_the_driver_sent_not_the_file(mlflow_server, write_recipe):
    # The recipe deletes its own file as the driver loads it: an executor that read the file
    # (a host without the working folder) could not run the trial.
    gone = "import os\nEXPERIMENT = 'shipped'\nif os.path.exists(__file__):\n    os.remove(__file__)\n"
    path = write_recipe(extra=gone)
    study = tuning.minimize(path, max_evals=2, seed=3, parallelism=2, tracking_uri=mlflow_server,
                            progress=False)
    assert not path.exists()
    assert [t.status for t in study.trials] == [TrialStatus.OK] * 2, [t.error for t in study.trials]
    (parent,), trials = study_runs(mlflow_server, "shipped")
    assert parent.info.status == "FINISHED" and {r.info.status for r in trials} == {"FINISHED"}
    assert all(r.data.metrics.get("val_accuracy") for r in trials)


def test_a_spark_trial_is_pruned_by_the_curves_of_the_trials_before_it(mlflow_server, write_recipe):
    path = write_recipe(LEARNING_RATE_MODEL, epochs=3, extra="EXPERIMENT = 'pruned'\n")
    # One slot: trial 2's task starts after trial 1 ended, and carries its curve to the executor.
    study = tuning.minimize(path, algo="grid", parallelism=1, tracking_uri=mlflow_server, progress=False,
                            objective="val_accuracy", prune=MedianPruner(startup_trials=1))
    assert [t.status for t in sorted(study.trials, key=lambda t: t.number)] == [TrialStatus.OK,
                                                                                 TrialStatus.PRUNED]
    (parent,), (good, hopeless) = study_runs(mlflow_server, "pruned")
    assert good.info.status == "FINISHED" and good.data.params["learning_rate"] == "0.5"
    assert hopeless.info.status == "KILLED" and hopeless.data.params["learning_rate"] == "1e-09"
    assert hopeless.data.tags["tuning.pruned"] == "true" and hopeless.data.tags["tuning.pruned_epoch"] == "0"
    assert parent.data.metrics["trials_pruned"] == 1 and study.best.run_id == good.info.run_id


# data() notes each Spark worker that loads it; the recipe, as the study (not a Spark task)
# imports it, waits for the first such note: no worker could load it yet if Spark started
# only after the study had loaded the recipe.
EARLY = """
import os
import time

import pyspark

if pyspark.TaskContext.get() is None:
    deadline = time.monotonic() + 240
    while not LOADS.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no Spark worker loaded the recipe while the study loaded it")
        time.sleep(0.05)
"""


@pytest.mark.parametrize("how", ["cli", "library"])
def test_spark_workers_load_the_recipe_while_the_study_loads_it(mlflow_server, write_recipe, tmp_path, how):
    # (The path is written into the recipe: an in-process study's Spark workers get the
    # environment of the JVM that pytest's first Spark session started.)
    loads = tmp_path / "loads.txt"
    header = DIGITS_DATA.replace("def data():\n", "def data():\n    with open(LOADS, 'a') as f:\n"
                                 "        print(os.getpid(), file=f)\n")
    extra = f"from pathlib import Path\nLOADS = Path({str(loads)!r})\n{EARLY}EXPERIMENT = 'early-{how}'\n"
    # As MLflow's hyperopt tutorial does: its own run around its own search, which each
    # load (the study's, each worker's) opens in the study's store and deletes again.
    search = ("\nimport mlflow\nfrom hyperopt import Trials, tpe\nfrom tuning import optim\n"
              f"with mlflow.start_run(run_name='search-{how}'):\n"
              "    optim.minimize(model=model, data=data, algo=tpe.suggest, max_evals=5, trials=Trials())\n")
    path = write_recipe(header=header, extra=extra, model=DIGITS_MODEL + search)
    if how == "cli":
        done = subprocess.run([TUNING, "run", str(path), "--parallelism", "2", "--max-evals", "2",
                               "--seed", "1", "--tracking-uri", mlflow_server], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        tuning.minimize(path, max_evals=2, seed=1, parallelism=2, tracking_uri=mlflow_server, progress=False)
    (parent,), trials = study_runs(mlflow_server, f"early-{how}")
    assert parent.info.status == "FINISHED" and [r.info.status for r in trials] == ["FINISHED"] * 2
    # Each of the two Python workers loaded the recipe and its data once: the trials used
    # what was loaded early.
    pids = loads.read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2, pids
    searches = MlflowClient(mlflow_server).search_runs(
        ["0"], f"attributes.run_name = 'search-{how}'", run_view_type=ViewType.ALL)
    assert [r.info.lifecycle_stage for r in searches] == ["deleted"] * 3
    assert not (tmp_path / "mlflow.db").exists()


def test_sigterm_cancels_running_trials_and_leaves_none_running(mlflow_server, recipe, tmp_path):
    # Each trial, once trained, sleeps until it is cancelled (600 s: longer than this test's waits).
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([TUNING, "run", str(recipe("stopped", sleep=600.0)), "--tracking-uri",
                                    mlflow_server, "--parallelism", "2", "--max-evals", "4", "--seed", "1"],
                                   cwd=tmp_path, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        client = MlflowClient(mlflow_server)
        deadline = time.monotonic() + 300
        while True:  # until two trials run at once, both done training
            experiment = client.get_experiment_by_name("stopped")
            running = experiment and client.search_runs(
                [experiment.experiment_id],
                "tags.`tuning.kind` = 'trial' and attributes.status = 'RUNNING' and metrics.test_loss > 0")
            if (running and len(running) == 2) or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert running and len(running) == 2, (f"two trials never ran at the same time (exit code "
                                               f"{process.poll()}):\n{err.read_text()[-3000:]}")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:  # a wait failed: the study, its Spark JVM and Python workers
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stderr = err.read_text()
    assert process.returncode == 130, stderr
    assert "resume with: tuning run" in stderr
    (parent,), trials = study_runs(mlflow_server, "stopped")
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in trials] == ["KILLED", "KILLED"]


@pytest.mark.parametrize("argv, env, message", [
    (["--parallelism", "2"], {}, "start a tracking server"),  # the default sqlite store
    (["--threads-per-trial", "1"], {}, "go with --parallelism N"),
    (["--parallelism", "2", "--isolate"], {}, "does not combine with"),
    (["--parallelism", "2", "--tracking-uri", "SERVER"], {"PATH": str(Path(sys.executable).parent),
                                                          "JAVA_HOME": ""}, "Java 17"),
], ids=["file-store", "threads-alone", "with-isolate", "no-java"])
def test_parallel_mistakes_are_one_line_errors(mlflow_server, write_recipe, argv, env, message, tmp_path):
    argv = [mlflow_server if a == "SERVER" else a for a in argv]
    done = subprocess.run([TUNING, "run", str(write_recipe()), *argv], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_recipe_mistake_under_parallelism_is_one_error_and_no_jvm_outlives_it(
        mlflow_server, write_recipe, tmp_path):
    """Spark starts while the recipe loads: when the recipe fails to load, the error is the
    one a serial study gives, and the JVM started for it (the command no longer waits for
    it to come up only to stop it) ends with the command."""
    bad = write_recipe(DIGITS_MODEL.replace("<<uniform(0, 0.5)>>", "<<uniformly(0, 0.5)>>"))
    process = subprocess.Popen([TUNING, "run", str(bad), "--parallelism", "2", "--tracking-uri",
                                mlflow_server], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "uniformly" in stderr and "recipe.py" in stderr and "Traceback" not in stderr

    def left() -> list[psutil.Process]:  # the command's process group, zombies aside
        return [p for p in psutil.process_iter(["status"]) if _group(p.pid) == process.pid
                and p.info["status"] != psutil.STATUS_ZOMBIE]

    deadline = time.monotonic() + 120  # a JVM still starting reads its closed stdin once it is up
    while survivors := left():
        assert time.monotonic() < deadline, f"outlived the command: {[p.cmdline() for p in survivors]}"
        time.sleep(0.5)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_an_executor_that_cannot_load_the_data_stops_the_study_with_its_reason(mlflow_server, write_recipe):
    # data() works where the study starts and fails in the Spark tasks, as a path that only
    # the driver's host has would.
    header = DIGITS_DATA.replace("def data():\n", "def data():\n    import pyspark\n"
                                 "    if pyspark.TaskContext.get() is not None:\n"
                                 "        open('only-on-the-driver.npz')\n")
    path = write_recipe(header=header, extra="EXPERIMENT = 'unloadable'\n")
    with pytest.raises(tuning.RecipeError) as error:
        tuning.minimize(path, max_evals=4, parallelism=2, tracking_uri=mlflow_server, progress=False)
    message = str(error.value)
    assert message.startswith("the recipe could not be loaded on the Spark executor at ")
    assert "data() raised FileNotFoundError: [Errno 2] No such file or directory: 'only-on-the-driver.npz'" \
        in message
    (parent,), trials = study_runs(mlflow_server, "unloadable")
    assert parent.info.status == "FAILED" and trials == []  # no trial ran, none was counted


def test_executors_without_tuning_get_a_hint_naming_pyspark_python(mlflow_server, write_recipe, tmp_path):
    # A Python that has no tuning (nor Keras): the one this virtual environment was made from.
    bare = Path(sys.base_prefix) / "bin" / "python3"
    done = subprocess.run([TUNING, "run", str(write_recipe()), "--parallelism", "1", "--max-evals", "1",
                           "--tracking-uri", mlflow_server], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYSPARK_PYTHON": str(bare), "PYTHONPATH": ""}, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "the Spark task failed: ModuleNotFoundError: No module named 'tuning' (the executors' Python " \
        "lacks tuning: install keras-mlflow-tuning" in done.stderr
    assert "set PYSPARK_PYTHON, where you start tuning, to that Python)" in done.stderr


def test_executors_check_no_recipe_name_the_driver_checked(mlflow_server, write_recipe, tmp_path):
    # Spark's Python workers start in the driver's working folder, which holds another
    # recipe.py: on their sys.path, it is no installed module that the recipe's name shadows.
    (tmp_path / "run").mkdir()
    path = shutil.copy(write_recipe(), tmp_path / "run" / "recipe.py")
    done = subprocess.run([TUNING, "run", str(path), "--parallelism", "1", "--max-evals", "1",
                           "--tracking-uri", mlflow_server, "--experiment", "same-name"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
