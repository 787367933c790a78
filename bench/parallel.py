"""Trials per minute with parallel trials on a local Spark, against one tracking server.

    .venv/bin/python bench/parallel.py                    # digits, 16 trials per study, ~8 min
    .venv/bin/python bench/parallel.py --trials 4 --repeats 1

Runs ``tuning run recipes/digits_cnn.py`` (each its own process, as a user runs it) against
a real ``mlflow server`` started here: serially (no Spark) and with ``--parallelism 1`` and
``2``, the same ``--seed`` and ``--max-evals``; the settings take turns, ``--repeats`` times.
Throughput is trials per minute of the study run (from its start to its end in MLflow,
so the start of Python, TensorFlow and the JVM is left out and shown apart). *Between
trials* is the same count over the span from the first trial's start to the last one's end:
it leaves out the one-time start of the Spark workers (each imports TensorFlow and loads
the data before its first trial).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from served import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "digits_cnn.py"
TUNING = str(Path(sys.executable).parent / "tuning")
SETTINGS = {"serial": [], "parallelism 1": ["--parallelism", "1"], "parallelism 2": ["--parallelism", "2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per study (--max-evals)")
    parser.add_argument("--repeats", type=int, default=2, help="studies per setting")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        server, uri = start_server(Path(name) / "server")
        try:
            rows = [_study(uri, setting, f"{setting}-{repeat}", args)
                    for repeat in range(args.repeats)
                    for setting in (list(SETTINGS) if repeat % 2 == 0 else list(SETTINGS)[::-1])]
        finally:
            stop_server(server)
    for row in rows:
        print(f"{row['setting']:<14} study {row['study_s']:6.1f} s ({row['per_minute']:.1f} trials/min, "
              f"{row['between_per_minute']:.1f} between trials), process {row['process_s']:6.1f} s")
    print()
    print(_summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _study(uri: str, setting: str, experiment: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    subprocess.run([TUNING, "run", str(RECIPE), "--tracking-uri", uri, "--experiment", experiment,
                    "--seed", str(args.seed), "--max-evals", str(args.trials), *SETTINGS[setting]],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = time.perf_counter() - started
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    study = next(r for r in runs if r.data.tags.get("tuning.kind") == "study")
    trials = [r for r in runs if r.data.tags.get("tuning.kind") == "trial"]
    finished = sum(r.info.status == "FINISHED" for r in trials)
    seconds = (study.info.end_time - study.info.start_time) / 1000
    span = (max(r.info.end_time for r in trials) - min(r.info.start_time for r in trials)) / 1000
    return {"setting": setting, "trials": finished, "study_s": seconds, "process_s": process,
            "per_minute": 60 * finished / seconds, "between_per_minute": 60 * finished / span}


def _summary(rows: list[dict]) -> str:
    lines = ["| setting | studies | trials/min (median) | ratio to parallelism 1 "
             "| between trials: trials/min, ratio | study s (median) | process s (median) |",
             "|---|---|---|---|---|---|---|"]
    median = {s: {key: statistics.median(r[key] for r in rows if r["setting"] == s)
                  for key in ("per_minute", "between_per_minute", "study_s", "process_s")}
              for s in SETTINGS}
    base = median["parallelism 1"]
    for setting, m in median.items():
        studies = sum(r["setting"] == setting for r in rows)
        lines.append(f"| {setting} | {studies} | {m['per_minute']:.1f} "
                     f"| {m['per_minute'] / base['per_minute']:.2f} "
                     f"| {m['between_per_minute']:.1f}, "
                     f"{m['between_per_minute'] / base['between_per_minute']:.2f} "
                     f"| {m['study_s']:.1f} | {m['process_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
