"""Resident memory over a long study: does it stay flat?

    .venv/bin/python bench/memory.py [--trials 30] [--backend jax] [--isolate]

Runs the digits recipe's search against a throw-away sqlite store and prints the resident
set size (RSS, not virtual size) of the study process and its workers after every trial,
then trial 1 against the last and the growth per trial after the first few (warm-up).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:  # importing tuning.trial imports Keras: only after the backend is set
    from tuning.trial import TrialResult

ROOT = Path(__file__).resolve().parent.parent


def resident_mb() -> float:
    """This process and its worker processes, if any."""
    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "digits_cnn.py"))
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow")
    parser.add_argument("--isolate", action="store_true", help="trials in worker processes")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend  # before tuning imports Keras
    import tuning

    samples: list[float] = []

    def measure(result: TrialResult) -> None:
        samples.append(resident_mb())
        print(f"trial {result.number:3d}  {result.status.value:6s}  RSS {samples[-1]:7.1f} MB", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        tuning.minimize(args.recipe, max_evals=args.trials, max_epochs=args.max_epochs, seed=0,
                        tracking_uri=f"sqlite:///{folder}/mlflow.db", progress=False,
                        isolate=args.isolate, callbacks=[measure])
    warm = min(5, len(samples) - 1)
    per_trial = (samples[-1] - samples[warm]) / max(1, len(samples) - 1 - warm)
    where = "isolated" if args.isolate else "in-process"
    print(f"\n{args.backend} {where}: RSS after trial 1: {samples[0]:.1f} MB; "
          f"after trial {len(samples)}: {samples[-1]:.1f} MB; "
          f"growth after trial {warm + 1}: {per_trial:+.2f} MB per trial")


if __name__ == "__main__":
    main()
