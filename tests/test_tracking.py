"""The MLflow side: the user's own MLflow setup, and stores opened by several processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

RACER = textwrap.dedent("""
    import os, sys, time
    from tuning.tracking import Tracker

    print("ready", flush=True)
    while not os.path.exists(sys.argv[1]):  # all open the store at the same moment
        time.sleep(0.001)
    Tracker(sys.argv[2]).experiment_id("raced")
""")


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    gate, store = tmp_path / "gate", f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(gate), store], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for racer in racers:  # each has imported MLflow and waits at the gate
        assert racer.stdout.readline().strip() == "ready"
    gate.touch()
    outcomes = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4, [err[-2000:] for _, err in outcomes]
    assert MlflowClient(store).get_experiment_by_name("raced") is not None
