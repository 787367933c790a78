"""Trials on a real Spark standalone cluster: a master and two workers on 127.0.0.1.

The cluster is started with pyspark's own launcher (``bin/spark-class``), each daemon in its
own session and folder, and stopped by the PIDs of their process groups. The CLI is the
driver; it is told the executors' Python with ``PYSPARK_PYTHON`` (on a ``spark://`` master
tuning leaves it to the user, see README's cluster section).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pyspark
import pytest
from hyperopt import Trials
from mlflow import MlflowClient

import tuning
from tests.conftest import DIGITS_MODEL, free_port
from tests.test_cli import TUNING
from tests.test_parallel import study_runs
from tuning import history
from tuning.tracking import Tracker

pytestmark = pytest.mark.slow

SPARK_HOME = Path(pyspark.__file__).parent
DEADLINE = 180  # seconds: JVMs start slowly on a busy 2-core machine

# Each trial tags its run with the folder it ran in: an executor's is <worker>/work/<app>/<executor>.
WHERE = '''
import os
import time

import mlflow
'''

WHERE_MODEL = '''    mlflow.set_tag("executor_cwd", os.getcwd())
    if DOOMED and os.getcwd().startswith(DOOMED):
        time.sleep(600)  # this trial's worker is killed under it
'''
MODEL = DIGITS_MODEL.replace("    net = keras.Sequential(", WHERE_MODEL + "    net = keras.Sequential(", 1)
assert MODEL != DIGITS_MODEL


class SparkCluster:
    """A standalone master and workers, each a ``spark-class`` process in its own session."""

    def __init__(self, folder: Path, workers: int = 2):
        self.folder = folder
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.size = workers
        self.env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
                    "PYSPARK_PYTHON": sys.executable,
                    # no REST submission server on the fixed port 6066 (another run may hold it)
                    "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}
        self.env.pop("SPARK_CONF_DIR", None)
        self.master: subprocess.Popen | None = None
        self.workers: dict[int, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._launches = 0

    def driver_env(self) -> dict[str, str]:
        """The environment of a driver (the CLI): this Python on the executors, loopback only."""
        return {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}

    def worker_dir(self, number: int) -> Path:
        return self.folder / f"worker{number}"

    def _launch(self, name: str, cwd: Path, *args: str) -> subprocess.Popen:
        self._launches += 1
        log = self.folder / f"{name}-{self._launches}.log"
        self.logs[name] = log
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            return subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], cwd=cwd, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.master = self._launch("master", self.folder / "master", "org.apache.spark.deploy.master.Master",
                                   "--host", "127.0.0.1", "--port", str(self.port),
                                   "--webui-port", str(self.ui_port))
        for number in range(1, self.size + 1):
            self.start_worker(number)
        self.wait_ready()

    def start_worker(self, number: int) -> None:
        folder = self.worker_dir(number)
        self.workers[number] = self._launch(
            f"worker{number}", folder, "org.apache.spark.deploy.worker.Worker", self.url,
            "--cores", "1", "--memory", "2g", "--work-dir", str(folder / "work"),
            "--host", "127.0.0.1", "--webui-port", "0")

    def state(self) -> dict:
        """The master's JSON status: workers, running and completed applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as reply:
            return json.load(reply)

    def _tail(self) -> str:
        return "\n".join(f"--- {name}:\n{log.read_text()[-2000:]}" for name, log in self.logs.items())

    def wait_ready(self) -> None:
        """Until the master is up and every worker registered with it (a fresh log line each start)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            dead = [p.args[1] for p in [self.master, *self.workers.values()] if p and p.poll() is not None]
            if dead:
                pytest.fail(f"a Spark daemon exited: {dead}\n{self._tail()}")
            registered = all("Successfully registered with master" in self.logs[f"worker{n}"].read_text()
                             for n in self.workers)
            try:
                state = self.state() if registered else {}
            except OSError:
                state = {}
            if state.get("status") == "ALIVE" and state.get("aliveworkers") == len(self.workers):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the Spark cluster was not ready in {DEADLINE} s:\n{self._tail()}")
            time.sleep(0.5)

    def kill_worker(self, number: int) -> None:
        """SIGKILL a worker's process group: its JVM and its executor's. The executor's Python
        workers (pyspark's daemon leads a group of its own) exit when their JVM is gone."""
        process = self.workers.pop(number)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        deadline = time.monotonic() + DEADLINE
        while left := self.processes_in(self.worker_dir(number)):
            if time.monotonic() > deadline:
                pytest.fail(f"processes of the killed worker live on: {[p.cmdline() for p in left]}")
            time.sleep(0.5)

    @staticmethod
    def processes_in(folder: Path) -> list[psutil.Process]:
        """The processes working in ``folder``: daemons, executors and Python workers it started."""
        found = []
        for process in psutil.process_iter(["cwd"]):
            cwd = process.info["cwd"]
            if cwd and Path(cwd).is_relative_to(folder):
                found.append(process)
        return found

    def heal(self) -> None:
        """Start again the workers that were killed; wait until all are registered."""
        for number in range(1, self.size + 1):
            if number not in self.workers or self.workers[number].poll() is not None:
                self.start_worker(number)
        self.wait_ready()

    def stop(self) -> None:
        for process in [*self.workers.values(), self.master]:
            if process is not None:
                _stop_group(process)
        for process in self.processes_in(self.folder):  # none should be left; if one is, by its PID
            with suppress(psutil.NoSuchProcess):
                process.kill()


def _stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group led by ``process``, SIGKILL it if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        pass
    try:  # executors and Python workers the daemon started are in its group too
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    cluster = SparkCluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(spark_cluster: SparkCluster) -> SparkCluster:
    """The module's cluster with both workers alive (a test before may have killed one)."""
    spark_cluster.heal()
    return spark_cluster


def recipe(write_recipe, doomed: Path | None = None, epochs: int = 1) -> Path:
    return write_recipe(MODEL, epochs=epochs, extra=WHERE + f"DOOMED = {str(doomed) if doomed else ''!r}\n")


def app_of(run) -> str:
    """The Spark application a trial ran in, from its executor's folder."""
    return Path(run.data.tags["executor_cwd"]).parent.name


def test_trials_run_on_the_cluster_and_log_like_a_serial_study(cluster, mlflow_server, write_recipe,
                                                               tmp_path):
    path = recipe(write_recipe)
    done = subprocess.run([TUNING, "run", path.name, "--spark-master", cluster.url, "--parallelism", "2",
                           "--max-evals", "4", "--seed", "1", "--tracking-uri", mlflow_server,
                           "--experiment", "cluster"],
                          cwd=tmp_path, env=cluster.driver_env(), capture_output=True, text=True,
                          timeout=DEADLINE + 120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    serial = tuning.minimize(path, max_evals=4, seed=1, experiment="cluster-serial",
                             tracking_uri=mlflow_server, progress=False)

    client = MlflowClient(mlflow_server)
    (parent,), trials = study_runs(mlflow_server, "cluster")
    (serial_parent,), serial_trials = study_runs(mlflow_server, "cluster-serial")
    assert parent.info.status == serial_parent.info.status == "FINISHED"
    assert parent.data.params["parallelism"] == "2"
    assert parent.data.tags["tuning.best_run_id"] in {r.info.run_id for r in trials}
    by_number = {int(r.data.tags["tuning.trial"]): r for r in trials}
    serial_by_number = {int(r.data.tags["tuning.trial"]): r for r in serial_trials}
    assert sorted(by_number) == sorted(serial_by_number) == [1, 2, 3, 4]  # one run per trial
    for number, run in by_number.items():
        twin = serial_by_number[number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params == twin.data.params  # the same seed samples the same configurations
        assert {k: run.data.tags[k] for k in run.data.params} == run.data.params
        assert run.data.tags["tuning.hyperopt_vals"] == twin.data.tags["tuning.hyperopt_vals"]
        # seeded per trial, the executor trains the model the serial study trained
        assert run.data.metrics == pytest.approx(twin.data.metrics, rel=1e-3)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0]
        assert run.outputs.model_outputs, "the trial's model is logged"
    assert serial.best.number in by_number

    # Every trial ran in an executor of the cluster's workers, in one application the
    # master lists as finished once the driver is gone.
    workers = {cluster.worker_dir(n) / "work" for n in (1, 2)}
    folders = [Path(r.data.tags["executor_cwd"]) for r in trials]
    assert all(f.parent.parent in workers for f in folders), folders
    (app,) = {app_of(r) for r in trials}
    assert any((w / app).is_dir() and list((w / app).glob("*/stderr")) for w in workers)
    deadline = time.monotonic() + DEADLINE
    while not (completed := [a for a in cluster.state()["completedapps"] if a["id"] == app]):
        assert time.monotonic() < deadline, cluster.state()
        time.sleep(0.5)
    assert completed[0]["name"] == "tuning" and completed[0]["state"] == "FINISHED"


def test_a_killed_worker_loses_its_trial_run_and_spark_reruns_the_trial(cluster, mlflow_server,
                                                                        write_recipe, tmp_path):
    doomed = cluster.worker_dir(2)
    path = recipe(write_recipe, doomed=doomed)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(
            [TUNING, "run", path.name, "--spark-master", cluster.url, "--parallelism", "2",
             "--max-evals", "6", "--seed", "2", "--tracking-uri", mlflow_server,
             "--experiment", "cluster-kill"],
            cwd=tmp_path, env=cluster.driver_env(), stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        client = MlflowClient(mlflow_server)
        deadline = time.monotonic() + DEADLINE
        while True:  # until a trial runs on worker 2 (where it waits to be killed)
            experiment = client.get_experiment_by_name("cluster-kill")
            victims = experiment and client.search_runs(
                [experiment.experiment_id],
                f"attributes.status = 'RUNNING' and tags.executor_cwd LIKE '{doomed}%'")
            if victims or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert victims, f"no trial ran on worker 2:\n{out.read_text()[-2000:]}{err.read_text()[-3000:]}"
        (victim,) = victims
        cluster.kill_worker(2)
        process.wait(timeout=DEADLINE + 120)
    finally:
        if process.poll() is None:
            _stop_group(process)
    assert process.returncode == 0, out.read_text()[-3000:] + err.read_text()[-3000:]

    (parent,), trials = study_runs(mlflow_server, "cluster-kill")
    assert parent.info.status == "FINISHED"
    assert not [r for r in trials if r.info.status == "RUNNING"]
    number = victim.data.tags["tuning.trial"]
    # Spark ran the task again, on the live worker: the new attempt ended the run the dead
    # worker left behind (interrupted, with the reason) and reran it under the same number ...
    lost = next(r for r in trials if r.info.run_id == victim.info.run_id)
    assert lost.info.status == "KILLED"
    assert lost.data.tags["tuning.error"] == "its Spark executor was lost; Spark ran the trial again"
    assert lost.data.tags["tuning.interrupted"] == "true"
    again = [r for r in trials if r.data.tags["tuning.trial"] == number and r is not lost]
    assert [r.info.status for r in again] == ["FINISHED"]
    assert again[0].data.tags["tuning.retry_of"] == lost.info.run_id
    assert again[0].data.params == lost.data.params
    assert not again[0].data.tags["executor_cwd"].startswith(str(doomed))
    # ... so a resume would not run that configuration a third time.
    past = history.rebuild(Tracker(mlflow_server), parent.info.experiment_id, parent.info.run_id, Trials())
    assert past.retries == () and past.proposals == 6 and len(past.results) == 6
    # Every trial of the budget ended; the study counts each once.
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["tuning.trial"]) for r in finished) == [1, 2, 3, 4, 5, 6]
    assert parent.data.metrics["trials_ok"] == 6
