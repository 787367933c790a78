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
    kind = <<choice(["ok", "sleep", "hog"])>>
    if kind == "sleep":
        time.sleep(60)
    if kind == "hog":
        block = np.ones((2000, 2**20 // 8))  # 2000 MB, all touched
        time.sleep(60)
    return {"loss": 0.0, "status": "ok"}
'''


def test_limits_stop_a_slow_and_a_hungry_trial(tmp_path, store):
    recipe = tmp_path / "limited.py"
    recipe.write_text(MODEL)
    study = tuning.minimize(recipe, max_evals=9, algo="rand", seed=1, tracking_uri=store,
                            progress=False, trial_timeout=8, trial_max_memory=1800)
    kinds = {t.params["kind"] for t in study.trials}
    assert kinds == {"ok", "sleep", "hog"}, "seed 1 samples every kind in 9 trials"
    client = MlflowClient(store)
    for trial in study.trials:
        run = client.get_run(trial.run_id)
        kind = trial.params["kind"]
        if kind == "ok":
            assert run.info.status == "FINISHED" and trial.loss == 0.0
        else:
            assert run.info.status == "KILLED"
            expected = "time limit: over 8 s" if kind == "sleep" else "memory limit:"
            assert run.data.tags["tuning.error"].startswith(expected)
            assert trial.status is tuning.TrialStatus.KILLED
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
