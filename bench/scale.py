"""What a trial costs as a study grows: overhead-dominated trials at 100 to 10,000 trials.

    .venv/bin/python bench/scale.py                              # everything (hours)
    .venv/bin/python bench/scale.py --sizes 30,120 --disk-trials 20   # a quick check
    .venv/bin/python bench/scale.py --sizes 1000 --stores sqlite --arms tuning,optuna --skip-disk

Workload: a function that returns a loss without training (five hyperparameters, one of
them a choice between two branches of which one has its own uniform), so that what is
measured is the search and the tracking, not Keras. Arms, each (arm, size, store) in its
own fresh process against its own fresh store (a sqlite file, or a real ``mlflow server``
started for it on 127.0.0.1):

- ``tuning``: ``tuning.minimize`` on a recipe file with markers, ``progress=False``;
- ``optuna``: Optuna's ``TPESampler(seed=1)``, in-memory study (the tutorial's setup), with
  optuna-integration's ``MLflowCallback`` logging every trial;
- ``mlflow-optuna``: MLflow 3's ``mlflow.optuna.MlflowStorage`` as the study's storage (no
  callback: the storage writes one MLflow run per trial). Each proposal reads the study
  back (a search, then one ``get_run`` per trial, at most 1,000: ``search_runs``' default
  page), so its cost grows with the study: ``--timeout`` ends it, and an arm that runs out
  of time is not run at the larger sizes.

Per trial: wall and process CPU time from the end of the previous trial to the end of this
one (the suggestion, the tracking and the loss), and the suggestion alone. Per run: disk
per trial, the server's CPU per trial (server store), and the time until a resumed study
proposes its next trial. For tuning on sqlite above 1,000 trials, the drift is measured
again ``--pairs`` times with both sides running at once: the big study, resumed, and a new
one take turns trial by trial, so that each ratio compares trials measured within
milliseconds of each other (the goal is judged on these; this machine's speed wanders by
±20 % over minutes, as much as the growth measured). Then, with ``--disk-trials``, the
digits disk check of ``keep_models="best:5"`` against ``"all"``. A markdown report goes to
stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/scale.py` from a checkout without install

from served import start_server, stop_server  # noqa: E402 - bench/ is this script's folder

SEED = 1
STUDY = "scale"  # the experiment (the recipe's EXPERIMENT) and the Optuna study name
STARTUP = 20  # hyperopt TPE's random startup trials: the early window is the 100 after them
GOALS = {"suggest_ms": 50.0, "drift": 1.2, "disk_mb": 20.0, "resume_s": 10.0}


# --------------------------------------------------------------------------- the workloads

def score(units: int, dropout: float, learning_rate: float, activation: str, branch: str,
          width: float | None) -> float:
    """The loss: deterministic, cheap, and with an optimum TPE can find."""
    loss = (dropout - 0.2) ** 2 + ((units - 40) / 64) ** 2 + (math.log(learning_rate) + 6) ** 2 / 50
    loss += {"relu": 0.0, "tanh": 0.05, "elu": 0.02}[activation]
    return loss + ((width - 0.3) ** 2 if branch == "wide" else 0.1)


# tuning's markers cannot nest, so the branch's own uniform is drawn in every trial and read
# only in the "wide" branch (as hyperas writes it); Optuna draws it only there.
LOSS_RECIPE = '''"""Loss only, no training (written by bench/scale.py)."""
import math

EXPERIMENT = "scale"


def data():
    return ()


{score}

def model():
    units = <<quniform(8, 64, 4)>>
    dropout = <<uniform(0, 0.5)>>
    learning_rate = <<loguniform(-9, -2)>>
    activation = <<choice(["relu", "tanh", "elu"])>>
    branch = <<choice(["narrow", "wide"])>>
    width = <<uniform(0, 1)>>
    loss = score(units, dropout, learning_rate, activation, branch, width if branch == "wide" else None)
    return {{"loss": loss, "status": "ok"}}
'''

# The disk check: a tiny dense net on sklearn's bundled digits, 1 epoch; saved, 30-250 KB.
DIGITS_RECIPE = '''"""A tiny Keras net on 8x8 digits for the disk check (written by bench/scale.py)."""
import keras
from sklearn.datasets import load_digits


def data():
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), keras.utils.to_categorical(digits.target, 10)
    return x[:400], y[:400], x[1400:1600], y[1400:1600]


def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)),
                            keras.layers.Dense(<<quniform(32, 256, 32)>>, activation="relu"),
                            keras.layers.Dropout(<<uniform(0, 0.5)>>),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=<<loguniform(-7, -3)>>),
                loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=1, batch_size=<<choice([16, 32])>>, verbose=0)
    return net
'''


def optuna_params(trial: Any) -> dict[str, Any]:
    """The same space as LOSS_RECIPE, as an Optuna user writes it (define-by-run)."""
    params = {"units": trial.suggest_int("units", 8, 64, step=4),
              "dropout": trial.suggest_float("dropout", 0.0, 0.5),
              "learning_rate": trial.suggest_float("learning_rate", math.exp(-9), math.exp(-2), log=True),
              "activation": trial.suggest_categorical("activation", ["relu", "tanh", "elu"]),
              "branch": trial.suggest_categorical("branch", ["narrow", "wide"])}
    params["width"] = trial.suggest_float("width", 0.0, 1.0) if params["branch"] == "wide" else None
    return params


# --------------------------------------------------------------------------- the driver

@dataclass(frozen=True)
class Job:
    """What a worker process is told to do."""

    kind: str  # "study", "resume", "extend" or "disk"
    arm: str
    size: int  # trials (for "resume": the trials the study already has)
    uri: str
    recipe: str
    timeout: float
    out: str
    progress_fd: int
    keep: str = "all"  # "disk" only
    turns: tuple[int, ...] = ()  # (read, write) pipe ends: wait for the turn before each trial, pass it after
    turn: int = 1  # with turns: trials per turn
    more: int = 100  # "extend": trials to add

    @property
    def label(self) -> str:
        store = "server" if self.uri.startswith("http") else "sqlite"
        return f"{self.kind} {self.arm}/{store}/{self.size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="study sizes, in trials")
    parser.add_argument("--stores", default="sqlite,server")
    parser.add_argument("--arms", default="tuning,optuna,mlflow-optuna")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds per study; an arm that runs out is not run at larger sizes")
    parser.add_argument("--disk-trials", type=int, default=1000)
    parser.add_argument("--skip-disk", action="store_true")
    parser.add_argument("--pairs", type=int, default=3,
                        help="tuning on sqlite, sizes over 1,000: the drift measured again this many times "
                             "by a new study and the big one taking turns trial by trial (0: none)")
    parser.add_argument("--turn-trials", type=int, default=1,
                        help="with --pairs: trials each side runs per turn (1: trial by trial, where "
                             "each side finds the caches as the other left them)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker)

    sizes = sorted(int(s) for s in args.sizes.split(","))
    stores, arms, head = args.stores.split(","), args.arms.split(","), header()  # load average before
    progress_fd = os.dup(2)  # workers write progress here; their own output goes to a log
    rows: list[dict[str, Any]] = []
    disk: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tuning-scale-") as tmp:
        folder = Path(tmp)
        recipe = folder / "loss_only.py"
        recipe.write_text(LOSS_RECIPE.format(score=inspect.getsource(score)))
        ran_out: dict[tuple[str, str], int] = {}  # (arm, store) -> the size that hit the timeout
        for size in sizes:
            for store in stores:
                for arm in arms:
                    row: dict[str, Any] = {"arm": arm, "store": store, "size": size}
                    rows.append(row)
                    if (arm, store) in ran_out:
                        row["error"] = f"skipped: ran out of time at {ran_out[arm, store]} trials"
                        continue
                    row.update(measure(arm, store, size, recipe, folder, args.timeout, progress_fd,
                                       args.pairs, args.turn_trials))
                    if row.get("trials", size) < size:
                        ran_out[arm, store] = size
                    if args.json:  # as it goes: a run of hours keeps what it measured if stopped
                        args.json.write_text(json.dumps({"header": head, "runs": rows}))
        if not args.skip_disk:
            digits = folder / "digits_dense.py"
            digits.write_text(DIGITS_RECIPE)
            for keep, trials in (("best:5", args.disk_trials), ("all", min(100, args.disk_trials))):
                disk.append(measure_disk(keep, trials, digits, folder, progress_fd))
                if not disk[-1].get("available", True):  # keep_models is not in this checkout yet
                    break
    print(report(rows, disk, head))
    if args.json:
        args.json.write_text(json.dumps({"header": head, "runs": rows, "disk": disk}, indent=1))


def measure(arm: str, store: str, size: int, recipe: Path, folder: Path, timeout: float,
            progress_fd: int, pairs: int = 0, turn: int = 1) -> dict[str, Any]:
    """One study in a fresh process on a fresh store, then its resume in another (and, for
    tuning on sqlite at sizes over 1,000, the drift measured ``pairs`` times: measure_pairs)."""
    work = folder / f"{arm}-{store}-{size}"
    work.mkdir()
    with fresh_store(store, work) as (uri, data, server_cpu):
        job = Job("study", arm, size, uri, str(recipe), timeout, str(folder / f"{work.name}-study.json"),
                  progress_fd)
        cpu = server_cpu()
        result = run_worker(job, work)
        if "error" in result:
            return result
        result["server_cpu"] = server_cpu() - cpu
        result["disk"], result["disk_db"] = disk_bytes(data), disk_bytes(data, only_db=True)  # before
        # the resume adds its trial. A study's fixed files (tuning's report.html: ~5 MB) weigh
        # on small studies: the table gives the database and the artifacts apart.
        if arm == "optuna":
            result["resume"] = "n/a (in-memory study)"
        else:
            resumed = run_worker(Job("resume", arm, result["trials"], uri, str(recipe), timeout,
                                     str(folder / f"{work.name}-resume.json"), progress_fd), work)
            result["resume"] = resumed.get("error") or resumed
            if arm == "tuning" and store == "sqlite" and size > 1000 and "error" not in resumed:
                result["pairs"] = measure_pairs(pairs, result["trials"] + 1, uri, recipe, work, progress_fd,
                                                turn)
    return result


def measure_pairs(pairs: int, trials: int, uri: str, recipe: Path, work: Path,
                  progress_fd: int, turn: int = 1) -> list[dict[str, float]]:
    """The drift again, with both sides run at the same time, taking turns trial by trial: a
    new study on a new store, and the big study resumed, each in its own process, pass one
    token back and forth, so that only one of them works at a time and each ratio compares
    trials measured within milliseconds of each other. (This machine's speed wanders by
    ±20 % over minutes, which the deciles of one long study, or blocks run one after the
    other, cannot tell from growth.) Median CPU ms per trial over trials 21-120 of each side.
    With ``turn`` over 1, each side runs that many trials per turn: only the first of them
    finds the caches as the other side left them."""
    measured = []
    for pair in range(pairs):
        early_work = work.parent / f"{work.name}-early{pair}"
        early_work.mkdir()
        to_early, from_late = os.pipe()  # the late side hands the turn to the early one here
        to_late, from_early = os.pipe()
        os.write(from_late, b"t")  # the new study has the first turn
        size = STARTUP + 100
        early = start_worker(Job("study", "tuning", size, f"sqlite:///{early_work}/mlflow.db", str(recipe),
                                 math.inf, str(early_work.parent / f"{early_work.name}.json"), progress_fd,
                                 turns=(to_early, from_early), turn=turn), early_work)
        late = start_worker(Job("extend", "tuning", trials, uri, str(recipe), math.inf,
                                str(work.parent / f"{work.name}-late{pair}.json"), progress_fd,
                                turns=(to_late, from_late), turn=turn, more=size), work)
        for fd in (to_early, from_late, to_late, from_early):  # a side that ends frees the other
            os.close(fd)
        results = [finish_worker(*early), finish_worker(*late)]
        if any("error" in r for r in results):
            break
        trials += results[1]["trials"]
        early_run, late_run = results
        measured.append({"early_ms": ms(early_run["cpu"][STARTUP:]), "late_ms": ms(late_run["cpu"][STARTUP:]),
                         "early_suggest_ms": ms(early_run["suggest"][STARTUP:]),
                         "late_suggest_ms": ms(late_run["suggest"][STARTUP:]), "turn": turn})
    return measured


def measure_disk(keep: str, trials: int, recipe: Path, folder: Path, progress_fd: int) -> dict[str, Any]:
    work = folder / f"disk-{keep.replace(':', '')}"
    work.mkdir()
    job = Job("disk", "tuning", trials, f"sqlite:///{work}/mlflow.db", str(recipe), math.inf,
              str(folder / f"{work.name}.json"), progress_fd, keep)
    result = run_worker(job, work)
    return {"keep": keep, **result, "bytes": disk_bytes(work)}


@contextlib.contextmanager
def fresh_store(store: str, work: Path) -> Iterator[tuple[str, Path, Callable[[], float]]]:
    """(tracking URI, the folder its data goes to, the server's CPU seconds so far)."""
    if store == "sqlite":
        yield f"sqlite:///{work}/mlflow.db", work, lambda: 0.0
        return
    import psutil

    with contextlib.redirect_stdout(sys.stderr):  # start_server prints its address
        server, uri = start_server(work / "server")
    try:
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in processes if p.is_running())

        for _ in range(30):  # let its start-up work (imports, migrations) end before measuring
            before = cpu()
            time.sleep(1)
            if cpu() - before < 0.05:
                break
        yield uri, work / "server", cpu
    finally:
        stop_server(server)


def run_worker(job: Job, work: Path) -> dict[str, Any]:
    return finish_worker(*start_worker(job, work))


def start_worker(job: Job, work: Path) -> tuple[Job, Path, subprocess.Popen]:
    spec = work.parent / f"{work.name}-{job.kind}-job.json"  # beside the store's folder, as the
    spec.write_text(json.dumps(asdict(job)))                  # log and result are: not its disk
    log = work.parent / f"{work.name}-{job.kind}.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    say(f"{job.label}: starting")
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)],
                                   cwd=work, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                   pass_fds=(job.progress_fd, *job.turns))
    return job, log, process


def finish_worker(job: Job, log: Path, process: subprocess.Popen) -> dict[str, Any]:
    if process.wait() != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-3:]
        say(f"{job.label}: failed ({process.returncode}):\n    " + "\n    ".join(tail))
        return {"error": f"failed: {tail[-1] if tail else process.returncode}"}
    return json.loads(Path(job.out).read_text())


def disk_bytes(folder: Path, only_db: bool = False) -> int:
    """Allocated bytes (as ``du`` counts them) of the store's files (the server's log left
    out), or of its sqlite database alone; the rest is artifacts."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*")
               if p.is_file() and p.suffix != ".log" and (not only_db or ".db" in p.name))


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the report

def header() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "commit": commit, "cpus": str(os.cpu_count()),
            "load average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            **{name: version(dist) for name, dist in (
                ("tuning", "keras-mlflow-tuning"), ("mlflow", "mlflow"), ("optuna", "optuna"),
                ("optuna-integration", "optuna-integration"), ("hyperopt", "hyperopt"),
                ("keras", "keras"))}}


def deciles(values: list[float]) -> list[float]:
    """The median of each tenth of the trials, in trial order (ms)."""
    size = len(values)
    chunks = [values[size * i // 10:size * (i + 1) // 10] for i in range(10)]
    return [statistics.median(c) * 1000 if c else math.nan for c in chunks]


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else math.nan


def summarise(row: dict[str, Any]) -> None:
    """Per-run figures from the raw per-trial seconds (kept in the row for --json)."""
    for measure_ in ("cpu", "wall", "suggest"):
        row[f"{measure_}_deciles_ms"] = deciles(row[measure_])
        row[f"{measure_}_median_ms"] = ms(row[measure_])
        row[f"{measure_}_early_ms"] = ms(row[measure_][STARTUP:STARTUP + 100])  # trials 21-120
        row[f"{measure_}_tpe_ms"] = ms(row[measure_][STARTUP:])  # every trial after the startup


def report(rows: list[dict[str, Any]], disk: list[dict[str, Any]], head: dict[str, str]) -> str:
    lines = ["# Cost per trial as a study grows (bench/scale.py)", ""]
    lines += [", ".join(f"{k} {v}" for k, v in head.items()), ""]
    lines += ["| arm | store | trials | CPU ms/trial, deciles 1 / 5 / 10 | wall ms/trial, deciles "
              "1 / 5 / 10 | suggestion ms (last decile) | server CPU ms/trial | disk KB/trial "
              "| disk MB: database + artifacts | resume s (rebuild s) | study end s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    full = ["", "CPU ms per trial (this process, all threads) by decile of trial number:", "",
            "| arm | store | trials | " + " | ".join(f"d{i}" for i in range(1, 11)) + " |",
            "|---|---|---|" + "---|" * 10]
    for row in rows:
        name = f"| {row['arm']} | {row['store']} "
        if "error" in row:
            lines.append(name + f"| {row['size']} | {row['error']} | | | | | | | | |")
            continue
        summarise(row)
        trials, cpu, wall = row["trials"], row["cpu_deciles_ms"], row["wall_deciles_ms"]
        resume = row["resume"]  # a dict, or why there is none
        resumed = resume if isinstance(resume, str) else f"{resume['resume_s']:.2f}" + (
            f" ({resume['rebuild_s']:.2f})" if resume["rebuild_s"] is not None else "")
        server = f"{row['server_cpu'] / trials * 1000:.1f}" if row["store"] == "server" else "–"
        count = f"{trials}" if trials == row["size"] else f"{trials} of {row['size']} (timeout)"
        lines.append(name + f"| {count} | {cpu[0]:.1f} / {cpu[4]:.1f} / {cpu[9]:.1f} "
                     f"| {wall[0]:.1f} / {wall[4]:.1f} / {wall[9]:.1f} "
                     f"| {row['suggest_deciles_ms'][9]:.1f} | {server} | {row['disk'] / trials / 1024:.1f} "
                     f"| {row['disk_db'] / 2**20:.1f} + {(row['disk'] - row['disk_db']) / 2**20:.1f} "
                     f"| {resumed} | {row['finish_s']:.1f} |")
        full.append(name + f"| {trials} | " + " | ".join(f"{x:.1f}" for x in cpu) + " |")
    lines += full + ["", "Goals (measured in this run):", ""]
    lines += goals([r for r in rows if "error" not in r], disk)
    if disk:
        lines += ["", "Disk check (digits, tiny dense net, 1 epoch, sqlite):", "",
                  "| keep_models | trials | median trial s | MB in all | KB added per trial "
                  "| MB at 1,000 trials |", "|---|---|---|---|---|---|"]
        for entry in disk:
            if "error" in entry or not entry["available"]:
                why = entry.get("error", "keep_models not available")
                lines.append(f"| {entry['keep']} | | | {why} | | |")
            else:
                guess = "" if entry["trials"] == 1000 else " (extrapolated)"
                lines.append(f"| {entry['keep']} | {entry['trials']} | {entry['trial_s']:.2f} "
                             f"| {entry['bytes'] / 2**20:.1f} | {entry['marginal_bytes'] / 1024:.1f} "
                             f"| {at_1000(entry) / 2**20:.1f}{guess} |")
    return "\n".join(lines)


def at_1000(disk: dict[str, Any]) -> float:
    """Bytes of the store at 1,000 trials: measured, or a smaller run's total plus its
    per-trial growth (not total ÷ trials: a study's fixed files would be counted per trial)."""
    return disk["bytes"] + disk["marginal_bytes"] * (1000 - disk["trials"])


def goals(rows: list[dict[str, Any]], disk: list[dict[str, Any]]) -> list[str]:
    """One line per goal and store, with the figures it is judged on."""
    def line(text: str, ok: bool, size: int = 10_000) -> str:
        where = "" if size == 10_000 else f" [largest size run: {size:,}; the goal is at 10,000]"
        return f"- {text}{where}: {'**met**' if ok else '**not met**'}"

    out = []
    tuning = {(r["store"], r["size"]): r for r in rows if r["arm"] == "tuning"}
    optuna = {(r["store"], r["size"]): r for r in rows if r["arm"] == "optuna"}
    for store in sorted({s for s, _ in tuning}):
        size = max(n for s, n in tuning if s == store)
        big, small = tuning[store, size], tuning.get((store, 100))
        suggest = big["suggest_deciles_ms"][9]
        out.append(line(f"suggestion ≤ {GOALS['suggest_ms']:.0f} ms at 10,000 trials, {store}: "
                        f"{suggest:.1f} ms (median, last decile)", suggest <= GOALS["suggest_ms"], size))
        pairs = big.get("pairs") or []
        if pairs:  # judged on the studies that took turns; the deciles are shown
            ratios = [p["late_ms"] / p["early_ms"] for p in pairs]
            each = ", ".join(f"{p['late_ms']:.1f} ÷ {p['early_ms']:.1f} = {p['late_ms'] / p['early_ms']:.2f} "
                             f"(suggestion {p['late_suggest_ms']:.1f} and {p['early_suggest_ms']:.1f})"
                             for p in pairs)
            drift = statistics.median(ratios)
            turn = pairs[0].get("turn", 1)
            turns = "trial by trial" if turn == 1 else f"every {turn} trials"
            out.append(line(f"CPU per trial ≤ {GOALS['drift']}× from trial 100 to 10,000, {store}, the big "
                            f"study resumed and a new one taking turns {turns} (median of trials "
                            f"{STARTUP + 1}–{STARTUP + 100} of each, ms): {each}; median {drift:.2f}",
                            drift <= GOALS["drift"], size))
        for kind in ("cpu", "wall"):
            last, early = big[f"{kind}_deciles_ms"][9], big[f"{kind}_early_ms"]
            text = (f"{kind.replace('cpu', 'CPU')} per trial ≤ {GOALS['drift']}× from trial 100 to 10,000, "
                    f"{store}: last decile {last:.1f} ms ÷ trials {STARTUP + 1}–{STARTUP + 100} of the same "
                    f"run {early:.1f} ms = {last / early:.2f}")
            if small is not None and small is not big:  # the other reading, shown, not judged
                text += (f" (÷ the 100-trial run's median of trials {STARTUP + 1}–100, "
                         f"{small[f'{kind}_tpe_ms']:.1f} ms: {last / small[f'{kind}_tpe_ms']:.2f})")
            if pairs:
                out.append(f"- {text} (minutes apart: shown, not judged)")
            else:
                out.append(line(text, last / early <= GOALS["drift"], size))
        if isinstance(big["resume"], dict):
            seconds = big["resume"]["resume_s"]
            out.append(line(f"resume of 10,000 trials ≤ {GOALS['resume_s']:.0f} s, {store}: {seconds:.2f} s "
                            "until the resumed study's next proposal", seconds <= GOALS["resume_s"], size))
    pairs = [(key, tuning[key], optuna[key]) for key in sorted(tuning) if key in optuna]
    if pairs:
        def server(row: dict[str, Any]) -> float:  # its CPU per trial, ms
            return row["server_cpu"] / row["trials"] * 1000

        each = [f"{store} {size}: {t['cpu_median_ms']:.1f} vs {o['cpu_median_ms']:.1f} ms "
                f"({t['cpu_median_ms'] / o['cpu_median_ms']:.2f})"
                + (f", with the server's {t['cpu_median_ms'] + server(t):.1f} vs "
                   f"{o['cpu_median_ms'] + server(o):.1f}" if store == "server" else "")
                for (store, size), t, o in pairs]
        out.append(line("per-trial CPU (median, the study's process) ≤ Optuna + MLflowCallback's at every "
                        f"size: {'; '.join(each)}",
                        all(t["cpu_median_ms"] <= o["cpu_median_ms"] for _, t, o in pairs)))
    kept = next((d for d in disk if d["keep"] == "best:5" and "error" not in d and d["available"]), None)
    if kept is not None:
        how = "" if kept["trials"] == 1000 else f" (extrapolated from {kept['trials']} trials)"
        megabytes = at_1000(kept) / 2**20
        out.append(line(f"keep_models=\"best:5\": disk for 1,000 digits trials ≤ {GOALS['disk_mb']:.0f} MB: "
                        f"{megabytes:.1f} MB{how}", megabytes <= GOALS["disk_mb"]))
    elif disk:
        out.append(f"- keep_models=\"best:5\" disk goal: {disk[0].get('error', 'keep_models not available')}")
    return out


# --------------------------------------------------------------------------- the worker

class Ticker:
    """Per trial: wall and process CPU (all threads) from the previous trial's end to this
    one's, and the time spent proposing it (what ``timed`` wrappers added since)."""

    def __init__(self, job: Job) -> None:
        self.job, self.wall, self.cpu, self.suggest = job, [], [], []
        self.pending = 0.0
        self.first_proposal: float | None = None  # perf_counter at the end of the first one
        self.progress = os.fdopen(job.progress_fd, "w", buffering=1)
        self.turns, self.turn = job.turns, job.turn
        self.start()

    def start(self) -> None:
        self.last = (time.perf_counter(), time.process_time())

    def timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # No functools.wraps: tuning names a custom algo after its __module__, and a wrapper
        # that looked like tuning.tpe would be replaced by "tpe" on resume.
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.turns and len(self.wall) % self.turn == 0:
                os.read(self.turns[0], 1)  # the other side's trial ended (or it exited: b"")
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                self.pending += ended - started
                self.first_proposal = self.first_proposal or ended

        return timed

    def tick(self, *_: Any) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self.last[0])
        self.cpu.append(now[1] - self.last[1])
        self.suggest.append(self.pending)
        self.last, self.pending = now, 0.0
        if self.turns and len(self.wall) % self.turn == 0:
            with contextlib.suppress(BrokenPipeError):  # the other side is done
                os.write(self.turns[1], b"t")
        done = len(self.wall)
        if done % max(1, self.job.size // 10) == 0:
            recent = slice(-max(1, self.job.size // 10), None)
            self.progress.write(f"[{time.strftime('%H:%M:%S')}] {self.job.label}: {done} trials, last "
                                f"{len(self.wall[recent])}: {ms(self.cpu[recent]):.1f} ms CPU, "
                                f"{ms(self.wall[recent]):.1f} ms wall, {ms(self.suggest[recent]):.1f} ms "
                                "suggestion per trial\n")

    def result(self, **more: Any) -> dict[str, Any]:
        return {"trials": len(self.wall), "wall": self.wall, "cpu": self.cpu, "suggest": self.suggest,
                "finish_s": time.perf_counter() - self.last[0], **more}


def timed_sampler(ticker: Ticker) -> Any:
    """Optuna's TPESampler(seed=1), every call that proposes a trial timed."""
    import optuna

    base = optuna.samplers.TPESampler
    methods = ("before_trial", "infer_relative_search_space", "sample_relative", "sample_independent")
    timed = type("TimedTPESampler", (base,), {m: ticker.timed(getattr(base, m)) for m in methods})
    return timed(seed=SEED)


def _worker(spec: Path) -> None:
    job = Job(**json.loads(spec.read_text()))
    result = WORKERS[job.kind, job.arm](job)
    Path(job.out).write_text(json.dumps(result))


def study_tuning(job: Job) -> dict[str, Any]:
    import tuning
    from tuning.tpe import TPE

    ticker = Ticker(job)
    study = tuning.minimize(job.recipe, max_evals=job.size, seed=SEED, tracking_uri=job.uri,
                            progress=False, timeout=job.timeout, algo=ticker.timed(TPE()),
                            callbacks=[ticker.tick])
    assert not study.failed, study.failed[0].error
    result = ticker.result()
    unfinish(job.uri, study.run_id)
    return result


def resume_tuning(job: Job) -> dict[str, Any]:
    """Until the resumed study has proposed its next trial: the study run found, its lease
    taken, the history rebuilt, TPE's first proposal on the whole history. Imports are paid
    before the clock starts; the one trial it then runs is not timed."""
    import tuning
    import tuning.history
    from tuning.tpe import TPE

    ticker, rebuilt, past = Ticker(job), [], []
    rebuild = tuning.history.rebuild

    def timed_rebuild(*args: Any) -> Any:
        started = time.perf_counter()
        history = rebuild(*args)
        rebuilt.append(time.perf_counter() - started)
        past.append(len(history.results))
        return history

    tuning.history.rebuild = timed_rebuild  # the study calls it as history.rebuild
    started = time.perf_counter()
    study = tuning.minimize(job.recipe, max_evals=job.size + 1, seed=SEED, tracking_uri=job.uri,
                            progress=False, resume=True, algo=ticker.timed(TPE()))
    assert past == [job.size], (past, job.size)
    unfinish(job.uri, study.run_id)
    return {"resume_s": ticker.first_proposal - started, "rebuild_s": rebuilt[0], "past_trials": past[0]}


def extend_tuning(job: Job) -> dict[str, Any]:
    """``job.more`` trials more of the study, resumed; per trial as in a study."""
    import tuning
    from tuning.tpe import TPE

    ticker = Ticker(job)
    study = tuning.minimize(job.recipe, max_evals=job.size + job.more, seed=SEED, tracking_uri=job.uri,
                            progress=False, resume=True, algo=ticker.timed(TPE()), callbacks=[ticker.tick])
    assert not study.failed and len(ticker.cpu) == job.more, (len(study.failed), len(ticker.cpu))
    result = ticker.result()
    unfinish(job.uri, study.run_id)
    return result


def unfinish(uri: str, run_id: str) -> None:
    """Leave the study unfinished, as a crash or Ctrl-C does, so that --resume continues it."""
    from mlflow import MlflowClient

    MlflowClient(uri).update_run(run_id, "KILLED")


def study_optuna(job: Job) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    callbacks, storage = [], None
    if job.arm == "optuna":
        from optuna_integration import MLflowCallback

        callbacks.append(MLflowCallback(tracking_uri=job.uri, metric_name="loss"))
    else:
        storage = mlflow_storage(job.uri, create=True)
    ticker = Ticker(job)
    study = optuna.create_study(storage=storage, sampler=timed_sampler(ticker), study_name=STUDY)
    ticker.start()
    study.optimize(lambda trial: score(**optuna_params(trial)), n_trials=job.size, timeout=job.timeout,
                   callbacks=[*callbacks, ticker.tick])
    if storage is not None:
        storage.flush_all_batches()
    return ticker.result()


def resume_mlflow_optuna(job: Job) -> dict[str, Any]:
    """``optuna.load_study`` on MlflowStorage, then the next trial's ask and suggestions."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study = optuna.load_study(study_name=STUDY, storage=mlflow_storage(job.uri),
                              sampler=optuna.samplers.TPESampler(seed=SEED))
    trial = study.ask()
    optuna_params(trial)
    seconds = time.perf_counter() - started
    study.tell(trial, 0.0)
    return {"resume_s": seconds, "rebuild_s": None, "past_trials": job.size}


def mlflow_storage(uri: str, create: bool = False) -> Any:
    import mlflow
    from mlflow.optuna.storage import MlflowStorage

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(STUDY) if create else mlflow.get_experiment_by_name(STUDY)
    return MlflowStorage(experiment_id=experiment.experiment_id)


def disk_tuning(job: Job) -> dict[str, Any]:
    import tuning

    if "keep_models" not in inspect.signature(tuning.minimize).parameters:
        return {"available": False}
    ticker, sizes = Ticker(job), {}
    first = max(1, job.size // 5)  # past the first models and the store's first pages

    def snapshot(result: Any) -> None:
        ticker.tick()
        if result.number in (first, job.size):
            sizes[result.number] = disk_bytes(Path.cwd())  # the worker runs in the store's folder

    study = tuning.minimize(job.recipe, max_evals=job.size, seed=SEED, tracking_uri=job.uri,
                            progress=False, keep_models=job.keep, callbacks=[snapshot])
    # What each further trial adds, measured between two trials: the study's fixed files (the
    # empty database, the report drawn at its end) are in the total, once.
    marginal = (sizes[job.size] - sizes[first]) / (job.size - first) if job.size > first else math.nan
    return {"available": True, "trials": len(study.trials), "failed": len(study.failed),
            "trial_s": statistics.median(ticker.wall), "marginal_bytes": marginal}


WORKERS: dict[tuple[str, str], Callable[[Job], dict[str, Any]]] = {
    ("study", "tuning"): study_tuning, ("resume", "tuning"): resume_tuning,
    ("extend", "tuning"): extend_tuning,
    ("study", "optuna"): study_optuna, ("study", "mlflow-optuna"): study_optuna,
    ("resume", "mlflow-optuna"): resume_mlflow_optuna, ("disk", "tuning"): disk_tuning}


if __name__ == "__main__":
    main()
