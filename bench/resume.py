"""How long resuming a study of many trials takes: rebuilding hyperopt's history.

    .venv/bin/python bench/resume.py [--trials 1000]

Writes a study of N finished trials (params, raw hyperopt values, loss) into a sqlite
store, starts a real ``mlflow server`` over it on 127.0.0.1, and times
``tuning.history.rebuild`` (what ``--resume`` does before training) through the server
and directly on the sqlite store.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from hyperopt import Trials
from mlflow.entities import Metric, Param, RunTag
from served import start_server, stop_server

from tuning import history
from tuning.tracking import Tracker


def write_study(tracker: Tracker, trials: int) -> tuple[str, str]:
    experiment_id = tracker.experiment_id("resume-bench")
    study = tracker.start_run(experiment_id, "study", "study", tags={"tuning.recipe": "bench.py"})
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    for number in range(1, trials + 1):
        raw = {"units": int(rng.integers(0, 4)), "dropout": float(rng.random())}
        run_id = tracker.start_run(experiment_id, f"trial-{number}", "trial", study,
                                   tags={"tuning.trial": str(number),
                                         "tuning.hyperopt_vals": json.dumps(raw)})
        tracker.client.log_batch(run_id, metrics=[Metric("hyperopt_loss", -float(rng.random()), now, 0)],
                                 params=[Param("units", str([8, 16, 32, 64][raw["units"]])),
                                         Param("dropout", str(raw["dropout"]))],
                                 tags=[RunTag("units", "x")])
        tracker.end_run(run_id, "FINISHED")
    return experiment_id, study


def timed_rebuild(uri: str, experiment_id: str, study: str, trials: int) -> float:
    tracker = Tracker(uri)
    started = time.perf_counter()
    hyperopt_trials = Trials()
    results = history.rebuild(tracker, experiment_id, study, hyperopt_trials)
    seconds = time.perf_counter() - started
    assert len(results) == len(hyperopt_trials.trials) == trials
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        sqlite = f"sqlite:///{folder / 'mlflow.db'}"
        started = time.perf_counter()
        experiment_id, study = write_study(Tracker(sqlite), args.trials)
        print(f"wrote a study of {args.trials} trials in {time.perf_counter() - started:.1f} s")
        direct = timed_rebuild(sqlite, experiment_id, study, args.trials)
        server, url = start_server(folder / "server", sqlite)
        try:
            served = timed_rebuild(url, experiment_id, study, args.trials)
        finally:
            stop_server(server)
    print(f"rebuild of {args.trials} trials: {served:.2f} s through mlflow server, "
          f"{direct:.2f} s on sqlite directly")


if __name__ == "__main__":
    main()
