"""Population based training against a grid of the same size and the same epochs.

    .venv/bin/python bench/pbt.py --population 8 --rounds 5 --seeds 3

The comparison pbt-keras shows, on ``recipes/diabetes_regression.py`` against a temporary
sqlite store, for each seed:

- ``pbt``: ``tuning.pbt(recipe, population=N, rounds=R, seed=s)``: N members, each
  trained ``R × (60 // R)`` epochs (the recipe fits 60), the worst quarter copying the
  best quarter after every round but the last.
- ``grid``: ``tuning.minimize(recipe, algo="grid", fraction=N / grid size, max_evals=N,
  seed=s)``: N points of the recipe's grid drawn without repeats, each trained as many
  epochs as a member (``max_epochs``), so both arms train N × the same epochs.

Reported per arm: the best objective (``val_loss`` on the held-out quarter, penalties
included), the plain mean squared error of the best model on that quarter (reloaded from
MLflow), the wall time, and the training steps taken (batches: a smaller batch size
means more steps per epoch, and a PBT copy takes its source's batch size). The recipe
validates on its test quarter, so that MSE is not an independent hold-out: both arms
select on it alike. One untimed study first warms TensorFlow and the store up, and the
arms alternate which runs first, so neither pays the start-up costs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

import tuning
from tuning.grid import grid_size
from tuning.recipe import Recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "diabetes_regression.py"


def run_pbt(store: str, population: int, rounds: int, seed: int) -> tuning.StudyResult:
    return tuning.pbt(RECIPE, population=population, rounds=rounds, seed=seed, tracking_uri=store,
                      experiment=f"pbt-{seed}")


def run_grid(store: str, population: int, epochs: int, seed: int) -> tuning.StudyResult:
    recipe = Recipe.from_file(RECIPE)
    size = grid_size(recipe.template.distributions(recipe.namespace))
    return tuning.minimize(recipe, algo="grid", fraction=population / size, max_evals=population,
                           max_epochs=epochs, seed=seed, tracking_uri=store, experiment=f"grid-{seed}")


def test_mse(store: str, study: tuning.StudyResult, x_test: np.ndarray, y_test: np.ndarray) -> float:
    model = tuning.load_best(study.best.run_id, tracking_uri=store)
    predicted = model.predict(x_test, verbose=0).reshape(-1)
    return float(np.mean((predicted - y_test) ** 2))


def steps(store: str, study: tuning.StudyResult, samples: int, epochs: int, rounds: int) -> int:
    """Batches trained: PBT members by the batch size of each round, grid trials by theirs."""
    client = MlflowClient(store)
    total = 0
    for trial in study.trials:
        sizes = [m.value for m in client.get_metric_history(trial.run_id, "hp.batch_size")]
        per_round = sizes or [trial.params["batch_size"]] * rounds  # a grid trial's never changes
        total += sum(math.ceil(samples / size) * (epochs // rounds) for size in per_round)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N, one PBT and one grid study each")
    args = parser.parse_args()
    x_train, _, x_test, y_test = Recipe.from_file(RECIPE).load_data()
    epochs = args.rounds * (60 // args.rounds)  # what every PBT member trains
    rows = []
    with tempfile.TemporaryDirectory(prefix="pbt-bench-") as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        tuning.minimize(RECIPE, max_evals=1, max_epochs=1, tracking_uri=store, experiment="warm-up")
        for seed in range(1, args.seeds + 1):
            arms = {"pbt": lambda s=seed: run_pbt(store, args.population, args.rounds, s),
                    "grid": lambda s=seed: run_grid(store, args.population, epochs, s)}
            order = list(arms) if seed % 2 else list(reversed(arms))
            measured = {}
            for arm in order:
                started = time.perf_counter()
                study = arms[arm]()
                seconds = time.perf_counter() - started
                assert not study.failed, [t.error for t in study.failed]
                measured[arm] = (study.best.loss, test_mse(store, study, x_test, y_test), seconds,
                                 steps(store, study, len(x_train), epochs, args.rounds))
            rows.append((seed, measured))
    print_table(rows, args, epochs)


COLUMNS = (("best val_loss", "{:.4f}"), ("test MSE", "{:.4f}"), ("s", "{:.0f}"), ("steps", "{:.0f}"))


def print_table(rows: list, args: argparse.Namespace, epochs: int) -> None:
    """One markdown row a seed: PBT, grid and PBT / grid for every column, then the mean ratios."""
    print(f"\n{args.population} members × {epochs} epochs per arm ({args.rounds} rounds of "
          f"{epochs // args.rounds}); {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')}\n")
    print("| seed | " + " | ".join(f"PBT {name} | grid {name} | ratio" for name, _ in COLUMNS) + " |")
    print("|---" * (1 + 3 * len(COLUMNS)) + "|")
    ratios: list[list[float]] = [[] for _ in COLUMNS]
    for seed, measured in rows:
        cells = []
        for i, (_, style) in enumerate(COLUMNS):
            pbt, grid = measured["pbt"][i], measured["grid"][i]
            ratios[i].append(pbt / grid)
            cells += [style.format(pbt), style.format(grid), f"{pbt / grid:.3f}"]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    print("| mean ratio | " + " | ".join(f" | | **{statistics.mean(r):.3f}**" for r in ratios) + " |")


if __name__ == "__main__":
    main()
