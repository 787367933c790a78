"""Resident memory and garbage collection over a long study: do they stay flat?

    .venv/bin/python bench/memory.py [--trials 30] [--backend jax] [--isolate]
    .venv/bin/python bench/memory.py --tiny --trials 1000     # a one-layer net: 1,000 trials in minutes

Runs the digits recipe's search (or, with ``--tiny``, a one-epoch dense net on the 8×8
digits) against a throw-away sqlite store and prints the resident set size (RSS, not
virtual size) of the study process and its workers after every trial, and the time this
process spent in Python's garbage collector during it. Then trial 1 against the last, the
growth per trial after the first few (warm-up), and the collector's time per trial in the
first and the last tenth of the study, with their ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:  # importing tuning.trial imports Keras: only after the backend is set
    from tuning.trial import TrialResult

ROOT = Path(__file__).resolve().parent.parent
TINY = """
import keras
from sklearn.datasets import load_digits


def data():
    digits = load_digits()
    x, y = (digits.data[:600] / 16.0).astype("float32"), keras.utils.to_categorical(digits.target[:600], 10)
    return x[:400], y[:400], x[400:], y[400:]


def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)),
                            keras.layers.Dense(<<quniform(8, 32, 8)>>,
                                               activation=<<choice(["relu", "tanh"])>>),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Adam(<<loguniform(-7, -2)>>), loss="categorical_crossentropy",
                metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=1, batch_size=64, validation_data=(x_test, y_test), verbose=0)
    return net
"""


class CollectorClock:
    """Seconds this process spends in the garbage collector, from gc's own callbacks."""

    def __init__(self) -> None:
        self.total, self._started = 0.0, 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


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
    parser.add_argument("--tiny", action="store_true", help="a one-epoch dense net instead of --recipe")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend  # before tuning imports Keras
    import tuning

    samples: list[float] = []
    collector, collected = CollectorClock(), [0.0]

    def measure(result: TrialResult) -> None:
        samples.append(resident_mb())
        collected.append(collector.total)
        print(f"trial {result.number:4d}  {result.status.value:6s}  RSS {samples[-1]:7.1f} MB  "
              f"gc {1000 * (collected[-1] - collected[-2]):6.1f} ms", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        if args.tiny:
            args.recipe = str(Path(folder) / "tiny.py")
            Path(args.recipe).write_text(TINY)
        tuning.minimize(args.recipe, max_evals=args.trials, max_epochs=args.max_epochs, seed=0,
                        tracking_uri=f"sqlite:///{folder}/mlflow.db", progress=False,
                        isolate=args.isolate, callbacks=[measure])
    warm = min(5, len(samples) - 1)
    per_trial = (samples[-1] - samples[warm]) / max(1, len(samples) - 1 - warm)
    where = "isolated" if args.isolate else "in-process"
    print(f"\n{args.backend} {where}: RSS after trial 1: {samples[0]:.1f} MB; "
          f"after trial {len(samples)}: {samples[-1]:.1f} MB; "
          f"growth after trial {warm + 1}: {per_trial:+.2f} MB per trial")
    per = [b - a for a, b in zip(collected, collected[1:], strict=False)]
    tenth = max(1, len(per) // 10)
    first, last = statistics.median(per[:tenth]) * 1000, statistics.median(per[-tenth:]) * 1000
    print(f"garbage collection per trial (median): first tenth {first:.1f} ms, last tenth {last:.1f} ms, "
          f"ratio {last / first if first else float('nan'):.2f}")


if __name__ == "__main__":
    main()
