"""The tracking server goes away mid-study: training goes on, nothing finished is lost."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tuning
from tests.conftest import free_port, start_server, stop_server
from tests.fault_proxy import FaultProxy
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

# MODEL whose trial number HOLD_TRIAL (model() calls, counted in GATE.calls) creates GATE.held
# at the end of its first epoch, to say it is training, and trains on once GATE exists.
HELD_MODEL = MODEL.replace("validation_data=(x_test, y_test))", "validation_data=(x_test, y_test),\n"
                           "            callbacks=held())")
HOLD = '''
import os, time


def held():
    with open(GATE + ".calls", "a") as calls:
        calls.write("call\\n")
    if len(open(GATE + ".calls").readlines()) != HOLD_TRIAL:
        return []

    class Hold(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                open(GATE + ".held", "w").close()
                deadline = time.monotonic() + 600
                while not os.path.exists(GATE) and time.monotonic() < deadline:
                    time.sleep(0.05)
    return [Hold()]
'''
assert HELD_MODEL != MODEL


def finished_trials(url: str) -> list:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("outage")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              "tags.`tuning.kind` = 'trial' and attributes.status = 'FINISHED'")


class ServedStudy:
    """A real mlflow server of its own and a `tuning run` against it, in a subprocess, whose
    trial number ``hold_trial`` waits after its first epoch until :meth:`release`."""

    def __init__(self, tmp_path: Path, write_recipe, *flags: str, hold_trial: int):
        self.folder = tmp_path / "server"
        self.folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = start_server(self.folder, self.port)
        self.gate = tmp_path / "gate"
        constants = f'EXPERIMENT = "outage"\nHOLD_TRIAL = {hold_trial}\nGATE = {str(self.gate)!r}\n'
        self.recipe = write_recipe(model=HELD_MODEL, extra=constants + HOLD)
        self.out, self.err = tmp_path / "study.out", tmp_path / "study.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.study = subprocess.Popen(
                [TUNING, "run", str(self.recipe), "--tracking-uri", self.url, *flags], cwd=tmp_path,
                text=True, stdout=out, stderr=err, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_until(self, done, what: str, timeout: float = 300) -> None:
        """Until ``done()``; fails, naming ``what`` it waited for, if the study ends first or after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            assert self.study.poll() is None, f"the study ended (exit code {self.study.returncode}) " \
                f"before {what}:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.stderr()[-3000:]}"
            time.sleep(0.2)

    def wait_until_held(self) -> None:
        """Until the held trial has trained its first epoch (and waits)."""
        self.wait_until(self.gate.with_name("gate.held").exists, "held trial")

    def release(self) -> None:
        self.gate.touch()

    def wait(self, timeout: float) -> str:
        """Until the study ends; what it wrote on stderr."""
        self.study.wait(timeout=timeout)
        return self.stderr()

    def restart_server(self) -> None:
        self.server = start_server(self.folder, self.port)  # same store, same address

    def stop(self) -> None:
        if self.study.poll() is None:
            self.study.kill()
            self.study.wait()
        stop_server(self.server)


def test_server_killed_and_restarted_mid_study_loses_nothing(write_recipe, tmp_path):
    served = ServedStudy(tmp_path, write_recipe, "--max-evals", "5", "--seed", "3", "--patience", "300",
                         hold_trial=3)
    try:
        served.wait_until_held()
        stop_server(served.server)  # mid-study: the third trial is training
        served.release()
        served.wait_until(lambda: "retrying for up to 300 s" in served.stderr(), "outage reported")
        served.restart_server()
        stderr = served.wait(timeout=600)
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
    served = ServedStudy(tmp_path, write_recipe, "--max-evals", "6", "--patience", "3", hold_trial=2)
    try:
        served.wait_until_held()
        stop_server(served.server)  # mid-study: the second trial is training
        served.release()
        stderr = served.wait(timeout=300)
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
        # The trial cut off by the outage (the held one) is KILLED and its configuration ran
        # again: six ran to an end.
        cut = [r for r in runs if r.data.tags.get("tuning.interrupted") == "true"]
        assert len(cut) == 1 and cut[0].data.tags["tuning.trial"] == "2"
        assert len(runs) == 6 + len(cut) and all(r.info.status == "KILLED" for r in cut)
        assert len(finished_trials(served.url)) == 6
    finally:
        served.stop()


def test_replies_lost_after_the_server_acted_leave_one_run_per_trial(write_recipe, mlflow_server):
    """Every write is safe to repeat: a retried create finds what the lost attempt made."""
    recipe = write_recipe(model=MODEL.replace("epochs=4", "epochs=1"), extra='EXPERIMENT = "lost_replies"\n')
    drops = {"/experiments/create": 1, "/runs/create": 2, "/logged-models": 1, "/runs/outputs": 1}
    with FaultProxy(mlflow_server, drops, limit=2000, seconds=600) as proxy:
        study = tuning.minimize(recipe, max_evals=3, seed=1, tracking_uri=proxy.url, progress=False)
    assert sorted(path.split("/mlflow/")[-1] for _, path in proxy.dropped) == [  # every planned fault
        "experiments/create", "logged-models", "runs/create", "runs/create", "runs/outputs"]
    client = MlflowClient(mlflow_server)  # straight to the server, past the proxy
    (experiment,) = [e for e in client.search_experiments() if e.name == "lost_replies"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["tuning.kind"] for r in runs) == ["study", "trial", "trial", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)  # no phantom left RUNNING
    models = client.search_logged_models([experiment.experiment_id])
    assert sorted(str(m.status) for m in models) == ["READY"] * 3  # no orphan PENDING model
    assert all(len(r.outputs.model_outputs) == 1 for r in runs if r.data.tags["tuning.kind"] == "trial")
    assert len(study.trials) == 3 and all(t.model_logged for t in study.trials)


BIG_MODEL = MODEL.replace("<<quniform(8, 32, 8)>>", "<<choice([512, 1024])>>").replace("epochs=4", "epochs=1")


def test_a_full_artifact_disk_is_named_and_its_trials_finish_without_their_model(write_recipe, tmp_path):
    folder = tmp_path / "server"
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(artifacts)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")  # CI runs as root
    server = None
    try:
        with open(artifacts / "filler", "wb") as filler:  # leave room for the study's small files only
            free = os.statvfs(artifacts).f_bavail * os.statvfs(artifacts).f_frsize
            filler.write(b"\0" * (free - 64 * 1024))
        port = free_port()
        server = start_server(folder, port)
        url = f"http://127.0.0.1:{port}"
        recipe = write_recipe(model=BIG_MODEL, extra='EXPERIMENT = "full_disk"\n')
        run = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", url, "--max-evals", "2",
                              "--patience", "600"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert run.returncode == 0, run.stderr  # far below --patience: a server's error is not an outage
        # MLflow's server answers an upload to a full disk with a bare 500 (its log names the
        # OSError); the message says it is the server's error, and which request.
        assert "was not stored: the tracking server" in run.stderr and "answered with an error of its own: " \
            "HTTP 500 (Internal Server Error) to /api/2.0/mlflow-artifacts/artifacts/" in run.stderr
        assert "was unreachable for" not in run.stderr  # the study did not stop as for an outage
        assert "the best trial logged no model" in run.stdout and "load_best" not in run.stdout
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("full_disk")
        trials = client.search_runs([experiment.experiment_id], "tags.`tuning.kind` = 'trial'")
        assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]  # they trained: they count
        assert all("HTTP 500" in t.data.tags["tuning.model_error"] for t in trials)
        assert "No space left on device" in (folder / "server.log").read_text()  # what happened
        models = client.search_logged_models([experiment.experiment_id])
        assert models and all(str(m.status) == "FAILED" for m in models)  # none left PENDING
    finally:
        if server is not None:
            stop_server(server)
        subprocess.run(["umount", str(artifacts)])
