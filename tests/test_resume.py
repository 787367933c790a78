"""Never lose a trial: interrupted studies resume from the tracking server alone."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hyperopt import Trials
from mlflow import MlflowClient

import tuning
from tests.test_cli import TUNING
from tests.test_retention import IMPROVING
from tuning import history
from tuning.tracking import Tracker

# A trial that needs no training. STOP_AT makes the STOP_AT-th call (counted in CALLS_FILE)
# raise KeyboardInterrupt, as a Ctrl-C in the middle of that trial would. GATE_FILE is a
# barrier the test opens: the trial (every one, or only the HOLD_AT-th call) creates
# GATE_FILE.held to say it is running, then waits until GATE_FILE exists (or it is killed).
SLOW_MODEL = '''
import os, time


def data():
    return 1, 2, 3, 4


def model(a, b, c, d):
    x = <<uniform(0, 1)>>
    calls, count = os.environ.get("CALLS_FILE"), 0
    if calls:
        with open(calls, "a") as f:
            f.write("call\\n")
        count = len(open(calls).readlines())
        if os.environ.get("STOP_AT") and count == int(os.environ["STOP_AT"]):
            raise KeyboardInterrupt
    gate = os.environ.get("GATE_FILE")
    if gate and count == int(os.environ.get("HOLD_AT", count)):
        open(gate + ".held", "a").close()
        deadline = time.monotonic() + 600
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
    return {"loss": (x - 0.3) ** 2, "status": "ok"}
'''


def study_runs(store: str, experiment: str = "slow"):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    studies = [r for r in runs if r.data.tags["tuning.kind"] == "study"]
    trials = sorted((r for r in runs if r.data.tags["tuning.kind"] == "trial"),
                    key=lambda r: int(r.data.tags["tuning.trial"]))
    return studies, trials


@pytest.fixture
def slow_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "slow.py"
    path.write_text(SLOW_MODEL)
    return path


def interrupt_in_call(at: int, recipe: Path, store: str, tmp_path: Path, monkeypatch, **options) -> None:
    """A study whose model raises KeyboardInterrupt in its ``at``-th call, as a Ctrl-C there
    would (calls after it run on: STOP_AT is unset again)."""
    monkeypatch.setenv("CALLS_FILE", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("STOP_AT", str(at))
    with pytest.raises(KeyboardInterrupt):
        tuning.minimize(recipe, tracking_uri=store, progress=False, **options)
    monkeypatch.delenv("STOP_AT")


@pytest.mark.slow
def test_interrupt_then_resume_continues_the_same_study(slow_recipe, store, tmp_path, monkeypatch):
    interrupt_in_call(3, slow_recipe, store, tmp_path, monkeypatch, max_evals=5, seed=4)
    (study,), trials = study_runs(store)
    assert study.info.status == "KILLED"
    assert [r.info.status for r in trials] == ["FINISHED", "FINISHED", "KILLED"]

    hyperopt_trials = Trials()
    result = tuning.minimize(slow_recipe, max_evals=6, tracking_uri=store, progress=False,
                             resume=True, trials=hyperopt_trials)
    (resumed,), trials = study_runs(store)
    assert resumed.info.run_id == study.info.run_id == result.run_id
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["tuning.resumes"] == "1" and resumed.data.params["seed"] == "4"
    assert [int(r.data.tags["tuning.trial"]) for r in trials] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.info.status for r in trials] == ["FINISHED"] * 2 + ["KILLED"] + ["FINISHED"] * 4
    # The interrupted trial's configuration ran again first, as trial 4, which says so.
    assert trials[2].data.tags["tuning.interrupted"] == "true"
    assert trials[3].data.tags["tuning.retry_of"] == trials[2].info.run_id
    assert vals(trials[3]) == vals(trials[2])
    finished = [vals(r) for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == 6 == len(set(finished))  # max_evals trials ran to an end, none twice
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 7  # 6, and the interrupted start
    assert len(hyperopt_trials.trials) == 6  # TPE saw the first two trials and the rerun
    assert [t.number for t in result.trials] == [1, 2, 4, 5, 6, 7]
    best = min(trials[:2] + trials[3:], key=lambda r: r.data.metrics["hyperopt_loss"])
    assert resumed.data.tags["tuning.best_run_id"] == best.info.run_id == result.best.run_id

    # What an uninterrupted study with the same seed proposed, in the same order.
    uninterrupted = tuning.minimize(slow_recipe, max_evals=6, seed=4, tracking_uri=store, progress=False,
                                    experiment="uninterrupted")
    _, straight = study_runs(store, "uninterrupted")
    assert len(uninterrupted.trials) == 6 and [vals(r) for r in straight] == finished


def vals(run) -> str:
    """A trial's raw hyperopt values, as recorded."""
    return run.data.tags["tuning.hyperopt_vals"]


def snapshot_path(store: str, study_run_id: str) -> Path:
    """Where a sqlite store (artifacts beside it) keeps the study's history snapshot."""
    folder = MlflowClient(store).get_run(study_run_id).info.artifact_uri.removeprefix("file://")
    return Path(folder, history.SNAPSHOT_FOLDER, history.SNAPSHOT_FILE)


def rebuilt_both_ways(store: str, study) -> tuple[history.History, history.History]:
    """The study's history as --resume reads it: from its snapshot, then (the file gone) run by run."""
    tracker = Tracker(store)
    from_snapshot = history.rebuild(tracker, study.info.experiment_id, study.info.run_id, Trials())
    snapshot_path(store, study.info.run_id).unlink()
    from_runs = history.rebuild(tracker, study.info.experiment_id, study.info.run_id, Trials())
    return from_snapshot, from_runs


def assert_same_past(one: history.History, other: history.History) -> None:
    assert one.results == other.results and one.retries == other.retries
    assert one.proposals == other.proposals
    assert sorted(one.records, key=lambda r: r.number) == sorted(other.records, key=lambda r: r.number)


def test_resume_reads_the_snapshot_and_only_the_runs_newer_than_it(slow_recipe, store, tmp_path, monkeypatch):
    monkeypatch.setattr(history, "SNAPSHOT_EVERY", 2)
    # Trial 5 starts more than the snapshot's clock margin (1 s) after trial 4: only its run is newer.
    pause = lambda result: time.sleep(1.5) if result.number == 4 else None  # noqa: E731
    interrupt_in_call(5, slow_recipe, store, tmp_path, monkeypatch, max_evals=8, seed=4, callbacks=[pause])
    (study,), trials = study_runs(store)
    with gzip.open(snapshot_path(store, study.info.run_id), "rt") as file:
        stored = json.load(file)  # written as the study ended; the interrupted trial is left to its run
    assert [r["number"] for r in stored["records"]] == [1, 2, 3, 4]
    assert stored["records"][0]["raw"] == json.loads(vals(trials[0]))

    from_snapshot, from_runs = rebuilt_both_ways(store, study)
    assert_same_past(from_snapshot, from_runs)
    assert from_snapshot.runs_read == 1 and from_runs.runs_read == 5
    assert [r.number for r in from_snapshot.results] == [1, 2, 3, 4]
    assert from_snapshot.retries == ((6, trials[4].info.run_id),)  # trial 5 runs again first


@pytest.mark.slow
def test_a_study_killed_after_a_snapshot_resumes_with_what_its_runs_say(write_recipe, store, tmp_path):
    # Every trial is better than the last, so with best:1 each one deletes its predecessor's
    # model right after the snapshot that still lists it; the process dies in trial 3's callback.
    recipe = write_recipe(IMPROVING, extra="INTERRUPT_AT = 0\n")
    script = (f"import os, signal, tuning, tuning.history\n"
              f"tuning.history.SNAPSHOT_EVERY = 1\n"
              f"die = lambda r: os.kill(os.getpid(), signal.SIGKILL) if r.number == 3 else None\n"
              f"tuning.minimize({str(recipe)!r}, max_evals=6, seed=1, tracking_uri={store!r}, "
              f"keep_models='best:1', progress=False, callbacks=[die])\n")
    died = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr
    client = MlflowClient(store)
    (study,) = client.search_runs([client.get_experiment_by_name("recipe").experiment_id],
                                  "tags.`tuning.kind` = 'study'")
    with gzip.open(snapshot_path(store, study.info.run_id), "rt") as file:
        stored = {r["number"]: r for r in json.load(file)["records"]}
    assert sorted(stored) == [1, 2, 3] and stored[2]["model_logged"]  # since deleted by trial 3

    from_snapshot, from_runs = rebuilt_both_ways(store, study)
    assert_same_past(from_snapshot, from_runs)
    assert [(r.number, r.model_logged) for r in from_snapshot.results] == [(1, False), (2, False), (3, True)]


@pytest.mark.slow
def test_a_rerun_that_its_time_limit_stops_stays_a_rerun(slow_recipe, store, tmp_path, monkeypatch):
    # The isolated worker stops the rerun of the interrupted trial 3; its own result says
    # which run it reran, so the snapshot agrees with the runs that trial 3 had its rerun.
    interrupt_in_call(3, slow_recipe, store, tmp_path, monkeypatch, max_evals=5, seed=4)
    monkeypatch.setenv("GATE_FILE", str(tmp_path / "never-opened"))
    monkeypatch.setenv("HOLD_AT", "4")  # the rerun waits until its limit stops it

    def stop_after_the_rerun(result: tuning.TrialResult) -> None:
        if result.number == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tuning.minimize(slow_recipe, max_evals=5, tracking_uri=store, progress=False, resume=True,
                        trial_timeout=3, callbacks=[stop_after_the_rerun])
    (study,), trials = study_runs(store)
    assert [r.info.status for r in trials] == ["FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert trials[3].data.tags["tuning.error"].startswith("time limit")
    assert trials[3].data.tags["tuning.retry_of"] == trials[2].info.run_id

    from_snapshot, from_runs = rebuilt_both_ways(store, study)
    assert_same_past(from_snapshot, from_runs)
    (rerun,) = [r for r in from_snapshot.records if r.number == 4]
    assert rerun.retry_of == trials[2].info.run_id and from_snapshot.runs_read == 0
    assert from_snapshot.proposals == 3 and not from_snapshot.retries  # nothing is left to rerun


def test_resume_refuses_a_different_algorithm(slow_recipe, store, tmp_path, monkeypatch):
    interrupt_in_call(2, slow_recipe, store, tmp_path, monkeypatch, max_evals=3, algo="tpe")
    with pytest.raises(tuning.ConfigurationError, match="was run with algo=tpe; leave out --algo"):
        tuning.minimize(slow_recipe, max_evals=3, algo="rand", tracking_uri=store, progress=False,
                        resume=True)


def _start(recipe: Path, store: str, cwd: Path, hold_at: int) -> subprocess.Popen:
    """``tuning run`` of 4 trials, whose ``hold_at``-th trial runs until the process is stopped."""
    env = {**os.environ, "CALLS_FILE": str(cwd / "calls.txt"), "GATE_FILE": str(cwd / "gate"),
           "HOLD_AT": str(hold_at), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([TUNING, "run", str(recipe), "--tracking-uri", store, "--max-evals", "4",
                             "--seed", "1"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(process: subprocess.Popen) -> None:
    """Kill a study the test did not see to its end (a wait that failed)."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=60)


def _wait_for(store: str, finished: int, process: subprocess.Popen, held: Path, timeout: float = 180) -> None:
    """Until a trial is held (its recipe created ``held``) and MLflow shows ``finished`` trials
    FINISHED and one RUNNING."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise AssertionError(f"the study ended (exit code {process.returncode}) before a trial was "
                                 f"held after {finished} finished; trials: {seen}\n{stderr[-3000:]}")
        _, trials = study_runs(store)
        seen = [r.info.status for r in trials]
        if held.exists() and seen.count("FINISHED") >= finished and "RUNNING" in seen:
            return
        time.sleep(0.2)
    raise AssertionError(f"no trial was held running after {finished} finished, in {timeout} s "
                         f"({held.name} {'exists' if held.exists() else 'missing'}); trials: {seen}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_trial_and_study_killed_and_prints_the_resume_command(
        slow_recipe, store, tmp_path, signum):
    process = _start(slow_recipe, store, tmp_path, hold_at=2)
    try:
        _wait_for(store, finished=1, process=process, held=tmp_path / "gate.held")
        process.send_signal(signum)  # trial 2 runs until this ends it
        _, stderr = process.communicate(timeout=120)
    finally:
        _stop(process)
    assert process.returncode == 130, stderr
    (study,), trials = study_runs(store)
    assert study.info.status == "KILLED"
    assert [r.info.status for r in trials] == ["FINISHED", "KILLED"]
    command = stderr.split("resume with: ", 1)[1].strip()
    assert command == (f"tuning run {slow_recipe} --tracking-uri {store} --max-evals 4 "
                       "--seed 1 --resume")

    resumed = subprocess.run([TUNING, *command.split()[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (study,), trials = study_runs(store)
    assert study.info.status == "FINISHED"
    assert [r.info.status for r in trials] == ["FINISHED", "KILLED", "FINISHED", "FINISHED", "FINISHED"]
    assert trials[2].data.tags["tuning.retry_of"] == trials[1].info.run_id


DROPPED_STOP = """
import signal, sys
from tuning import signals

signals.install()


class Garbage:
    def __init__(self, error):
        self.error = error

    def __del__(self):  # Python drops what a finalizer raises, as it does in a gc callback
        raise self.error


def stop():
    signals.request_stop(signal.SIGINT, None)


Garbage(ValueError("not a stop"))  # still reported
Garbage(KeyboardInterrupt())  # not a stop request: still reported
Garbage.__del__ = lambda self: stop()
Garbage(None)  # a stop request raised in a finalizer: kept, and quiet
try:
    signals.check()
except KeyboardInterrupt:
    print("kept")
"""


def test_a_stop_python_drops_is_kept_without_an_exception_ignored_message():
    """Ctrl-C while TensorFlow's gc callbacks run (start-up) once printed "Exception ignored
    in: … KeyboardInterrupt"; the stop is kept for the study to act on, so it says nothing."""
    run = subprocess.run([sys.executable, "-c", DROPPED_STOP], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "kept\n", run.stderr
    assert run.stderr.count("Exception ignored") == 2, run.stderr
    assert "ValueError: not a stop" in run.stderr and "KeyboardInterrupt" in run.stderr


@pytest.mark.slow
def test_after_kill_9_resume_marks_the_orphan_killed(slow_recipe, store, tmp_path):
    process = _start(slow_recipe, store, tmp_path, hold_at=3)
    try:
        _wait_for(store, finished=2, process=process, held=tmp_path / "gate.held")
    finally:
        process.kill()  # trial 3 runs until this
        process.wait(timeout=60)
    (study,), trials = study_runs(store)
    assert study.info.status == "RUNNING" and trials[-1].info.status == "RUNNING"

    resumed = subprocess.run([TUNING, "run", str(slow_recipe), "--tracking-uri", store, "--max-evals",
                              "4", "--resume"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (study,), trials = study_runs(store)
    assert study.info.status == "FINISHED"
    assert [r.info.status for r in trials] == ["FINISHED", "FINISHED", "KILLED", "FINISHED", "FINISHED"]
    assert trials[2].data.tags["tuning.error"] == "the process running it died"
    assert trials[3].data.tags["tuning.retry_of"] == trials[2].info.run_id  # its configuration ran again
    assert vals(trials[3]) == vals(trials[2])


@pytest.mark.slow
def test_a_study_still_running_is_not_resumed_beside_itself(slow_recipe, store, tmp_path):
    gate = tmp_path / "gate"
    env = {**os.environ, "GATE_FILE": str(gate), "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen([TUNING, "run", str(slow_recipe), "--tracking-uri", store, "--max-evals", "3"],
                             cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(store, finished=0, process=first, held=tmp_path / "gate.held")  # its first trial
        # Not held at the gate: a resume let through in error runs to its end and fails the test at once.
        second = subprocess.run([TUNING, "run", str(slow_recipe), "--tracking-uri", store, "--max-evals",
                                 "3", "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"is still running in process {first.pid}" in second.stderr and "--force" in second.stderr
        gate.touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        _stop(first)
    assert first.returncode == 0, stderr
    (study,), trials = study_runs(store)
    assert study.info.status == "FINISHED"
    assert [r.info.status for r in trials] == ["FINISHED"] * 3  # the refused resume touched nothing


@pytest.mark.slow
def test_force_takes_over_a_lease_whose_holder_is_gone(slow_recipe, store, tmp_path, monkeypatch):
    interrupt_in_call(2, slow_recipe, store, tmp_path, monkeypatch, max_evals=3)
    (study,), _ = study_runs(store)
    client = MlflowClient(store)  # as a host that went down with the study would have left it
    client.update_run(study.info.run_id, status="RUNNING")
    client.set_tag(study.info.run_id, "tuning.lease", json.dumps({"host": "gone.example", "pid": 7}))
    client.set_tag(study.info.run_id, "tuning.heartbeat", f"{time.time():.0f}")
    with pytest.raises(tuning.TuningError, match="still running in process 7 on gone.example"):
        tuning.minimize(slow_recipe, max_evals=3, tracking_uri=store, progress=False, resume=True)
    with pytest.raises(tuning.ConfigurationError, match="--force .* --resume"):
        tuning.minimize(slow_recipe, max_evals=3, tracking_uri=store, progress=False, force=True)
    result = tuning.minimize(slow_recipe, max_evals=3, tracking_uri=store, progress=False, resume=True,
                             force=True)
    assert result.run_id == study.info.run_id and len(result.trials) == 3
    assert json.loads(client.get_run(study.info.run_id).data.tags["tuning.lease"])["pid"] == os.getpid()


def test_a_resumed_study_keeps_its_algorithms_arguments(tmp_path):
    """``ALGO = partial(tpe.suggest, n_startup_jobs=5)`` is recorded as ``tpe``: resumed, the
    study goes on with the partial, not with plain ``tpe.suggest``'s 20 start-up trials."""
    from tuning.recipe import Recipe
    from tuning.settings import StudyConfig

    path = tmp_path / "partial_algo.py"
    path.write_text("from functools import partial\n\nfrom hyperopt import tpe\n\n"
                    "ALGO = partial(tpe.suggest, n_startup_jobs=5)\n\n\ndef data():\n    return ()\n\n\n"
                    "def model():\n    return {'loss': <<uniform(0, 1)>>, 'status': 'ok'}\n")
    config = StudyConfig.merge(Recipe.from_file(path), seed=3)
    stored = {"algo": "tpe", "seed": "3", "objective": "accuracy", "mode": "max"}
    assert config.algo_name == "tpe" and config.resumed(stored).algo is config.algo
    assert config.resumed({**stored, "algo": "rand"}).algo == "rand"  # the study's own, by name
