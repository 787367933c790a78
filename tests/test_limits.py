"""Per-trial limits: a trial over its time or memory is stopped, the search goes on."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

import tuning

pytestmark = pytest.mark.slow

# "sleep" sleeps past the time limit, "hog" holds 2 GB more than a worker with TensorFlow
# loaded (about 1 GB), "ok" returns at once.
MODEL = '''
import time
import numpy as np


def data():
    return 1, 2, 3, 4


def model(a, b, c, d):
    kind = <<choice(KINDS)>>
    if kind == "sleep":
        time.sleep(600)
    if kind == "hog":
        block = np.ones((2000, 2**20 // 8))  # 2000 MB, all touched
        time.sleep(600)
    return {"loss": 0.0, "status": "ok"}
'''


# One limit a study, so that neither depends on the machine's speed: on a slow machine a
# hog may take longer to fill its memory than any time limit would allow.
@pytest.mark.parametrize(("kind", "limits", "reason"), [
    ("sleep", {"trial_timeout": 8}, "time limit: over 8 s"),
    ("hog", {"trial_max_memory": 1800}, "memory limit:"),
], ids=["time", "memory"])
def test_limits_stop_a_slow_and_a_hungry_trial(tmp_path, store, kind, limits, reason):
    recipe = tmp_path / "limited.py"
    recipe.write_text(f"KINDS = ['ok', {kind!r}]\n" + MODEL)
    study = tuning.minimize(recipe, max_evals=4, algo="grid", tracking_uri=store, progress=False,
                            **limits)
    assert [t.params["kind"] for t in study.trials] == ["ok", kind]  # the grid: each kind once
    client = MlflowClient(store)
    ok, limited = (client.get_run(t.run_id) for t in study.trials)
    assert ok.info.status == "FINISHED" and study.trials[0].loss == 0.0
    assert limited.info.status == "KILLED" and limited.data.tags["tuning.error"].startswith(reason)
    assert study.trials[1].status is tuning.TrialStatus.KILLED
    assert study.best is not None and study.best.params["kind"] == "ok"


def test_isolated_trials_match_in_process_ones(write_recipe, store):
    recipe = write_recipe()
    study = tuning.minimize(recipe, max_evals=2, seed=5, tracking_uri=store, progress=False,
                            isolate=True, log_model=False)
    assert not study.failed
    client = MlflowClient(store)
    for trial in study.trials:
        run = client.get_run(trial.run_id)
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(trial.run_id, "val_loss")] == [0]
        assert run.data.metrics["hyperopt_loss"] == pytest.approx(trial.loss)



SCRIPT = '''
import tuning


def get_data():
    return [1, 2], [3]


def create_model(x_train, x_test):
    loss = {{choice([1.0, 2.0])}}
    return {"loss": loss, "status": "ok"}
'''


def test_a_scripts_own_function_names_reach_the_worker(tmp_path, store):
    """hyperas' scripts name their functions as they like (create_model, get_data)."""
    import importlib.util

    path = tmp_path / "hyperas_style.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("hyperas_style", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    study = tuning.minimize(script.create_model, script.get_data, max_evals=2, tracking_uri=store,
                            progress=False, isolate=True)
    assert [t.status for t in study.trials] == [tuning.TrialStatus.OK] * 2
    assert {MlflowClient(store).get_run(t.run_id).info.status for t in study.trials} == {"FINISHED"}
