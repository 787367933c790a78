"""What pruning saves: the same trial budget on the MNIST conv net, with and without pruning.

    .venv/bin/python bench/pruning.py                                  # 3 seeds, ~65 min
    .venv/bin/python bench/pruning.py --prune none,median,hyperband    # the median rule too
    .venv/bin/python bench/pruning.py --seeds 1 --trials 6 --epochs 3  # a quick look

Each study is one ``tuning run`` of ``recipes/mnist_cnn.py`` (its own process, as a user
runs it) with the same ``--seed`` and ``--max-evals``, once per ``--prune`` setting; the
settings take turns within each seed, so a noisy machine slows them alike. To make
pruning matter the recipe's ``EPOCHS`` is raised (a copy of the recipe with only that
constant changed), and to keep the run short the data is a slice of MNIST (``--train``
and ``--test`` images of ``../shared/data/mnist.npz``); the test images are also the
validation data the pruners read, as in the recipe.

Printed per study: wall time, epochs trained in all trials, pruned trials, and the best
trial's test accuracy; then per setting, against ``none``: the median ratio of wall times
and the mean difference in best accuracy (goal: at least 2× faster, within 0.3 points).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "mnist_cnn.py"
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
TUNING = str(Path(sys.executable).parent / "tuning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated search seeds")
    parser.add_argument("--trials", type=int, default=24, help="trials per study (--max-evals)")
    parser.add_argument("--epochs", type=int, default=27, help="the recipe's EPOCHS for this benchmark")
    parser.add_argument("--train", type=int, default=2000, help="training images used")
    parser.add_argument("--test", type=int, default=1000, help="test (and validation) images used")
    parser.add_argument("--prune", default="none,hyperband", help="settings, none first")
    parser.add_argument("--mnist-data", default=os.environ.get("TUNING_MNIST_NPZ", str(DEFAULT_MNIST)))
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    settings = args.prune.split(",")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        recipe, data = _inputs(folder, args)
        store = f"sqlite:///{folder / 'mlflow.db'}"
        # One untimed study first: the first process to import TensorFlow and read the data
        # from a cold disk would otherwise be charged for it.
        _study(recipe, data, store, 0, "none", 1)
        rows = []
        for turn, seed in enumerate(int(s) for s in args.seeds.split(",")):
            for prune in settings[turn % len(settings):] + settings[:turn % len(settings)]:
                rows.append(_study(recipe, data, store, seed, prune, args.trials))
                print(_line(rows[-1]), flush=True)
    print()
    print(_summary(rows, settings))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _inputs(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The recipe with EPOCHS raised, and the MNIST slice as an .npz for --data."""
    source = RECIPE.read_text()
    recipe = folder / "mnist_cnn.py"
    recipe.write_text(re.sub(r"^EPOCHS = \d+$", f"EPOCHS = {args.epochs}", source, flags=re.M))
    data = folder / "mnist_slice.npz"
    with np.load(args.mnist_data) as mnist:
        np.savez(data, x_train=mnist["x_train"][:args.train], y_train=mnist["y_train"][:args.train],
                 x_test=mnist["x_test"][:args.test], y_test=mnist["y_test"][:args.test])
    return recipe, data


def _study(recipe: Path, data: Path, store: str, seed: int, prune: str, trials: int) -> dict:
    experiment = f"prune-{prune}-seed-{seed}"
    started = time.perf_counter()
    subprocess.run([TUNING, "run", str(recipe), "--data", str(data), "--tracking-uri", store,
                    "--experiment", experiment, "--seed", str(seed), "--max-evals", str(trials),
                    "--prune", prune], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], "tags.`tuning.kind` = 'trial'")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    best = max(finished, key=lambda r: r.data.metrics["test_accuracy"])
    epochs = sum(len(client.get_metric_history(r.info.run_id, "val_accuracy")) for r in runs)
    return {"seed": seed, "prune": prune, "seconds": seconds, "trials": len(runs),
            "pruned": sum(r.data.tags.get("tuning.pruned") == "true" for r in runs),
            "epochs": epochs, "best_accuracy": best.data.metrics["test_accuracy"]}


def _line(row: dict) -> str:
    return (f"seed {row['seed']} prune={row['prune']:<9} {row['seconds']:7.1f} s  "
            f"{row['epochs']:3d} epochs  {row['pruned']:2d}/{row['trials']} pruned  "
            f"best accuracy {100 * row['best_accuracy']:.2f} %")


def _summary(rows: list[dict], settings: list[str]) -> str:
    lines = ["| prune | seeds | median wall s | epochs trained | trials pruned | mean best accuracy % "
             "| wall time ÷ none (median) | best accuracy − none (mean, points) |",
             "|---|---|---|---|---|---|---|---|"]
    baseline = {r["seed"]: r for r in rows if r["prune"] == settings[0]}
    for prune in settings:
        mine = [r for r in rows if r["prune"] == prune]
        ratio = statistics.median(r["seconds"] / baseline[r["seed"]]["seconds"] for r in mine)
        gap = statistics.mean(100 * (r["best_accuracy"] - baseline[r["seed"]]["best_accuracy"]) for r in mine)
        lines.append(f"| {prune} | {len(mine)} | {statistics.median(r['seconds'] for r in mine):.0f} "
                     f"| {sum(r['epochs'] for r in mine)} | {sum(r['pruned'] for r in mine)}"
                     f"/{sum(r['trials'] for r in mine)} "
                     f"| {statistics.mean(100 * r['best_accuracy'] for r in mine):.2f} "
                     f"| {ratio:.2f} ({1 / ratio:.2f}× faster) | {gap:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
