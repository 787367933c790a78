"""Trials per minute with parallel trials on a local Spark, against one tracking server.

    .venv/bin/python bench/parallel.py                    # digits, 16 trials per study, ~10 min
    .venv/bin/python bench/parallel.py --trials 4 --repeats 1 --settings serial "parallelism 2"

Runs ``tuning run recipes/digits_cnn.py`` (each its own process, as a user runs it) against
a real ``mlflow server`` started here: serially (no Spark) and with ``--parallelism 1`` and
``2``, the same ``--seed`` and ``--max-evals``; and, as the field's own answer on the same
work, MLflow 3's ``MlflowSparkStudy`` with 2 Spark slots (``bench/optuna_spark.py``, needs
``pip install -e '.[bench]'``). The settings take turns, ``--repeats`` times.
Throughput is trials per minute of the study run (from its start to its end in MLflow,
so the start of Python, TensorFlow and the JVM is left out and shown apart). *Between
trials* is the same count over the span from the first trial's start to the last one's end:
it leaves out the one-time start of the Spark workers (each imports TensorFlow and loads
the data before its first trial). Last, what each setting recorded for one of its trials.
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
TUNING = [str(Path(sys.executable).parent / "tuning"), "run", str(RECIPE)]
OPTUNA_SPARK = [sys.executable, str(Path(__file__).with_name("optuna_spark.py"))]
SETTINGS = {"serial": TUNING, "parallelism 1": [*TUNING, "--parallelism", "1"],
            "parallelism 2": [*TUNING, "--parallelism", "2"],
            "MlflowSparkStudy 2": [*OPTUNA_SPARK, "--parallelism", "2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per study (--max-evals)")
    parser.add_argument("--repeats", type=int, default=2, help="studies per setting")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        server, uri = start_server(Path(name) / "server")
        try:
            rows = [_study(uri, setting, f"{setting}-{repeat}", args)
                    for repeat in range(args.repeats)
                    for setting in (args.settings if repeat % 2 == 0 else args.settings[::-1])]
            records = {s: _recorded(uri, f"{s}-0") for s in args.settings}
        finally:
            stop_server(server)
    for row in rows:
        print(f"{row['setting']:<18} study {row['study_s']:6.1f} s ({row['per_minute']:.1f} trials/min, "
              f"{row['between_per_minute']:.1f} between trials), process {row['process_s']:6.1f} s")
    print()
    print(_summary(rows, args.settings))
    print()
    print(_records_table(records))
    if args.json:
        args.json.write_text(json.dumps({"studies": rows, "recorded": records}, indent=2))


def _study(uri: str, setting: str, experiment: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    subprocess.run([*SETTINGS[setting], "--tracking-uri", uri, "--experiment", experiment,
                    "--seed", str(args.seed), "--max-evals", str(args.trials)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = time.perf_counter() - started
    study, trials = _runs(uri, experiment)
    finished = sum(r.info.status == "FINISHED" for r in trials)
    seconds = (study.info.end_time - study.info.start_time) / 1000
    span = (max(r.info.end_time for r in trials) - min(r.info.start_time for r in trials)) / 1000
    return {"setting": setting, "trials": finished, "study_s": seconds, "process_s": process,
            "per_minute": 60 * finished / seconds, "between_per_minute": 60 * finished / span}


def _runs(uri: str, experiment: str) -> tuple:
    """The study run and its trial runs (children), for both tools."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    study = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return study, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]


def _recorded(uri: str, experiment: str) -> dict:
    """What the first finished trial of a study holds in MLflow."""
    client = MlflowClient(uri)
    _, trials = _runs(uri, experiment)
    run = min((r for r in trials if r.info.status == "FINISHED"), key=lambda r: r.info.start_time)
    points = sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics)
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    files, folders = [], [""]
    while folders:
        for item in client.list_artifacts(run.info.run_id, folders.pop() or None):
            (folders if item.is_dir else files).append(item.path)
    tags = [t for t in run.data.tags if not t.startswith("mlflow.")]
    return {"params": len(run.data.params), "tags": len(tags), "metrics": len(run.data.metrics),
            "metric points": points, "metric keys": sorted(run.data.metrics), "logged models": len(models),
            "artifacts": len(files)}


def _records_table(records: dict) -> str:
    lines = ["| setting | params | tags | metrics (keys) | metric points | logged models | artifacts |",
             "|---|---|---|---|---|---|---|"]
    for setting, r in records.items():
        keys = ", ".join(r["metric keys"])
        lines.append(f"| {setting} | {r['params']} | {r['tags']} | {r['metrics']} ({keys}) "
                     f"| {r['metric points']} | {r['logged models']} | {r['artifacts']} |")
    return "\n".join(lines)


def _summary(rows: list[dict], settings: list[str]) -> str:
    lines = ["| setting | studies | trials/min (median) | ratio to serial "
             "| between trials: trials/min, ratio | study s (median) | process s (median) |",
             "|---|---|---|---|---|---|---|"]
    median = {s: {key: statistics.median(r[key] for r in rows if r["setting"] == s)
                  for key in ("per_minute", "between_per_minute", "study_s", "process_s")}
              for s in settings}
    base = median.get("serial") or median[settings[0]]
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
