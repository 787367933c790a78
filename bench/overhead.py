"""What tracking costs: the same hyperparameter configurations trained four ways.

    .venv/bin/python bench/overhead.py                        # digits and MNIST, every arm
    .venv/bin/python bench/overhead.py --quick                # digits only, 3 configurations
    .venv/bin/python bench/overhead.py --digits-trials 8 --mnist-trials 3 --json out.json

Arms (each in its own process, each training exactly the same configurations with the
same seeds, each with Keras' per-batch output off):

- ``bare``: the recipe's model function with plain Keras, nothing tracked (the limit);
- ``tutorial``: the hyperas + MLflow tutorial way: ``mlflow.start_run()`` per trial, params
  and tags, one ``mlflow.log_metric`` call per metric per epoch after training, and
  ``mlflow.keras.log_model`` with its defaults (requirements inferred);
- ``optuna``: Optuna with optuna-integration's ``MLflowCallback`` (params, objective, its
  tags) and ``track_in_mlflow``; per-epoch metrics logged live from a Keras callback with
  ``mlflow.log_metrics``; the model logged with the same pinned requirements as ``tuning``;
- ``tuning``: ``tuning.minimize`` with its defaults (progress bar, model logging on), driven
  by a hyperopt ``suggest`` function that replays the fixed configurations.

Every tracked arm runs against a real ``mlflow server`` started here on 127.0.0.1 and
against MLflow's default sqlite store in a temporary folder. ``bare`` and ``tuning`` also
run under ``KERAS_BACKEND=jax``. The report gives, per arm and store, the median wall time
of a trial, its ratio to ``bare`` on the same backend, the time spent in ``fit``, the fixed
per-trial costs (run creation, logging, model serialisation) and, for arms that log while
training, the time per epoch the training thread is blocked.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/overhead.py` from a checkout without install

from served import start_server, stop_server  # noqa: E402 - bench/ is this script's folder

SEED = 7
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"  # shared/ beside the checkout
TRACKED_ARMS = ("tuning", "tutorial", "optuna")
GOALS = {"digits": 1.25, "mnist": 1.10}  # tuning / bare, median trial time
BLOCKING_GOAL_US = 1000.0


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Workload:
    name: str
    recipe: Path
    data: str | None  # a data file for the recipe's data(path), or None


@dataclass(frozen=True)
class Job:
    """One arm on one workload, store and backend: what a worker process is told."""

    arm: str
    backend: str
    store: str  # "none" (bare), "server" or "sqlite"
    workload: Workload
    tracking_uri: str | None  # None: MLflow's default store in the worker's folder
    configs: list[dict[str, Any]]  # {"params": real values, "vals": hyperopt's raw values}
    seed: int = SEED

    @property
    def label(self) -> str:
        return f"{self.workload.name}/{self.arm}/{self.backend}/{self.store}"


@dataclass
class TrialTiming:
    config: int
    seconds: float
    sections: dict[str, float] = field(default_factory=dict)  # seconds per section, this trial


@dataclass
class ArmResult:
    job: str
    trials: list[TrialTiming]
    epoch_block_us: list[float]  # per epoch: training thread blocked by tracking


def sample_configs(recipe: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations of the recipe's space, drawn once with hyperopt's random search.

    Both forms are kept: real values (what the model sees, and what bare, tutorial and
    Optuna are given) and hyperopt's raw values (choice indices), which ``tuning`` replays.
    """
    from hyperopt import Trials, rand, space_eval
    from hyperopt.base import Domain

    from tuning.template import Template

    space = {name: d.to_hyperopt(name) for name, d in Template.from_file(recipe).distributions().items()}
    docs = rand.suggest(list(range(n)), Domain(lambda _: 0.0, space), Trials(), seed)
    configs = []
    for doc in docs:
        vals = {k: _plain(v[0]) for k, v in doc["misc"]["vals"].items() if v}
        params = {k: _plain(v) for k, v in space_eval(space, vals).items()}
        configs.append({"params": params, "vals": vals})
    return configs


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------- the driver

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 3 configurations")
    parser.add_argument("--digits-trials", type=int, default=6)
    parser.add_argument("--mnist-trials", type=int, default=3)
    parser.add_argument("--mnist-data", default=os.environ.get("TUNING_MNIST_NPZ", str(DEFAULT_MNIST)))
    parser.add_argument("--workloads", default="digits,mnist", help="comma-separated: digits,mnist")
    parser.add_argument("--stores", default="server,sqlite", help="comma-separated: server,sqlite")
    parser.add_argument("--arms", default=",".join(TRACKED_ARMS), help="tracked arms to run")
    parser.add_argument("--backends", default="tensorflow,jax",
                        help="tensorflow runs every arm; other backends run bare and tuning")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker)

    workloads = {"digits": Workload("digits", ROOT / "recipes/digits_cnn.py", None),
                 "mnist": Workload("mnist", ROOT / "recipes/mnist_cnn.py", args.mnist_data)}
    names = ["digits"] if args.quick else args.workloads.split(",")
    trials = {"digits": 3 if args.quick else args.digits_trials, "mnist": args.mnist_trials}
    stores = args.stores.split(",")
    arms = args.arms.split(",")
    backends = args.backends.split(",")

    with tempfile.TemporaryDirectory(prefix="tuning-bench-") as tmp:
        folder = Path(tmp)
        server = None
        try:
            uris: dict[str, str | None] = {}
            if "server" in stores:
                server, uris["server"] = start_server(folder / "server")
            if "sqlite" in stores:
                uris["sqlite"] = None  # MLflow's default: sqlite:///mlflow.db in the worker's folder
            results: list[tuple[Job, ArmResult]] = []
            for name in names:
                workload = workloads[name]
                configs = sample_configs(workload.recipe, trials[name], SEED)
                print(f"\n{name}: {len(configs)} configurations", flush=True)
                for config in configs:
                    print(f"  {config['params']}", flush=True)
                for backend in backends:
                    jobs = [Job("bare", backend, "none", workload, None, configs)]
                    for store in stores:
                        jobs += [Job(arm, backend, store, workload, uris[store], configs)
                                 for arm in arms if backend == "tensorflow" or arm == "tuning"]
                    for job in jobs:
                        result = run_job(job, folder)
                        results.append((job, result))
                        each = " ".join(f"{t.seconds:.1f}({t.sections.get('fit', 0):.1f})"
                                        for t in result.trials)
                        print(f"  {job.label:34} trial s (fit s): {each}", flush=True)
        finally:
            if server is not None:
                stop_server(server)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([{"job": asdict(j) | {"workload": j.workload.name},
                                          "result": asdict(r)} for j, r in results],
                                         indent=1, default=str))


def run_job(job: Job, folder: Path) -> ArmResult:
    """Run one arm in a fresh process (the backend is chosen before Keras is imported)."""
    work = folder / job.store  # the sqlite arms share one default store, as users' runs do
    work.mkdir(exist_ok=True)
    spec = folder / "job.json"
    out = folder / "result.json"
    spec.write_text(json.dumps({"job": asdict(job), "out": str(out)}, default=str))
    env = {**os.environ, "KERAS_BACKEND": job.backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = folder / f"{job.label.replace('/', '-')}.log"
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)],
                              cwd=work, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{job.label} failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    data = json.loads(out.read_text())
    return ArmResult(data["job"], [TrialTiming(**t) for t in data["trials"]], data["epoch_block_us"])


# --------------------------------------------------------------------------- the report

# Fixed per-trial costs shown in the report: section name -> column title. Sections nest
# (model logging includes serialisation), so the columns do not add up.
FIXED_COSTS = {"start_run": "run creation", "params": "params+tags", "epoch_metrics": "epoch metrics",
               "finish": "final metrics+end", "log_model": "model logging",
               "save_model": "serialisation", "callback": "optuna callback"}


def report(results: list[tuple[Job, ArmResult]]) -> str:
    """Two markdown tables: time per trial with ratios, and where the fixed costs go."""
    bare = {(j.workload.name, j.backend): r for j, r in results if j.arm == "bare"}
    lines = ["| workload | arm | backend | store | trials | median trial s | ratio to bare | goal "
             "| median fit s | median rest s | ratio, fit noise removed | blocking µs/epoch "
             "(median / max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for job, result in results:
        trial = _median([t.seconds for t in result.trials])
        fit = _median([t.sections.get("fit", 0.0) for t in result.trials])
        rest = _median([t.seconds - t.sections.get("fit", 0.0) for t in result.trials])
        base = bare[(job.workload.name, job.backend)]
        base_trial = _median([t.seconds for t in base.trials])
        ratio = trial / base_trial
        # On a noisy machine fit times swing more than tracking costs: this ratio charges
        # the arm only its time outside fit (tracking, evaluation) beyond bare's.
        base_rest = _median([t.seconds - t.sections.get("fit", 0.0) for t in base.trials])
        steady = (base_trial + rest - base_rest) / base_trial
        goal, limit = "", GOALS[job.workload.name]
        if job.arm == "tuning":
            goal = "met" if ratio <= limit else f"missed (≤ {limit:.2f})"
        block = result.epoch_block_us
        blocking = f"{statistics.median(block):.0f} / {max(block):.0f}" if block else "–"
        if job.arm == "tuning" and block:
            blocking += " met" if max(block) < BLOCKING_GOAL_US else " missed"
        lines.append(f"| {job.workload.name} | {job.arm} | {job.backend} | {job.store} "
                     f"| {len(result.trials)} | {trial:.2f} | {ratio:.3f} | {goal} | {fit:.2f} "
                     f"| {rest:.2f} | {steady:.3f} | {blocking} |")
    lines += ["", "Fixed per-trial costs, median ms per trial (sections nest: model logging "
              "includes serialisation):", "",
              "| workload | arm | backend | store | " + " | ".join(FIXED_COSTS.values()) + " |",
              "|---|---|---|---|" + "---|" * len(FIXED_COSTS)]
    for job, result in results:
        if job.arm == "bare":
            continue
        cells = []
        for section in FIXED_COSTS:
            values = [t.sections[section] for t in result.trials if section in t.sections]
            cells.append(f"{_median(values) * 1000:.0f}" if values else "–")
        lines.append(f"| {job.workload.name} | {job.arm} | {job.backend} | {job.store} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# --------------------------------------------------------------------------- the worker

class Clock:
    """Sums the time spent in named sections during the current trial.

    ``wrap`` times an existing function or method in place (the real one still runs);
    ``section`` times a block of the benchmark's own code.
    """

    def __init__(self) -> None:
        self.sections: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)  # every call, for some sections

    def reset(self) -> None:
        self.sections.clear()

    def take(self) -> dict[str, float]:
        taken = dict(self.sections)
        self.sections.clear()
        return taken

    @contextlib.contextmanager
    def section(self, name: str, keep: bool = False) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.sections[name] += elapsed
            if keep:
                self.samples[name].append(elapsed)

    def wrap(self, owner: Any, attribute: str, name: str, keep: bool = False) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.section(name, keep):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def _worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    raw = spec["job"]
    workload = Workload(raw["workload"]["name"], Path(raw["workload"]["recipe"]), raw["workload"]["data"])
    job = Job(raw["arm"], raw["backend"], raw["store"], workload, raw["tracking_uri"], raw["configs"],
              raw["seed"])

    import keras  # KERAS_BACKEND was set by the driver

    from tuning.recipe import Recipe

    recipe = Recipe.from_file(workload.recipe)
    if workload.data:
        recipe.use_data_file(workload.data)
    data = recipe.load_data()  # once, before any trial is timed
    # A first fit pays TensorFlow's/XLA's one-time set-up: pay it in every arm before timing,
    # with the first configuration on a small slice of the data.
    _train(job, recipe, tuple(a[:256] for a in data), 0, job.configs[0]["params"])
    keras.backend.clear_session()
    clock = Clock()
    # Time every fit, in every arm; the tuning arm's own wrapper of fit calls this one.
    clock.wrap(keras.Model, "fit", "fit")
    trials = ARMS[job.arm](job, recipe, data, clock)
    Path(spec["out"]).write_text(json.dumps({
        "job": job.label, "trials": [asdict(t) for t in trials],
        "epoch_block_us": [s * 1e6 for s in clock.samples["epoch"]]}))


@contextlib.contextmanager
def plain_fit(*callbacks: Any) -> Iterator[None]:
    """``fit`` with Keras' per-batch output off (as tuning's default progress bar does) and
    ``callbacks`` added, for the arms that do not go through tuning."""
    import keras

    original = keras.Model.fit

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["verbose"] = 0
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *callbacks]
        return original(self, *args, **kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        keras.Model.fit = original


def _train(job: Job, recipe: Any, data: tuple[Any, ...], number: int, params: dict[str, Any],
           *callbacks: Any) -> tuple[Any, float]:
    """The recipe's model trained with ``params`` and the trial's seed; (model, test accuracy).

    The seed is tuning's: ``seed + trial number``, so every arm trains the same networks.
    """
    import keras

    from tuning.template import assigned

    keras.utils.set_random_seed((job.seed + number) % 2**32)
    with plain_fit(*callbacks), assigned(params):
        model = recipe.model(*data)
    x_test, y_test = recipe.test_data(data)
    return model, float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])


def run_bare(job: Job, recipe: Any, data: tuple[Any, ...], clock: Clock) -> list[TrialTiming]:
    """Plain Keras. Like the tutorial and Optuna arms, it leaves the Keras session alone
    between trials (tuning clears it, and pays for that inside its trial time)."""
    timings = []
    for index, config in enumerate(job.configs):
        clock.reset()
        started = time.perf_counter()
        _train(job, recipe, data, index + 1, config["params"])
        timings.append(TrialTiming(index, time.perf_counter() - started, clock.take()))
    return timings


def run_tutorial(job: Job, recipe: Any, data: tuple[Any, ...], clock: Clock) -> list[TrialTiming]:
    """One ``mlflow.start_run`` per trial, metrics after training, model logged with defaults."""
    import mlflow
    import mlflow.keras

    clock.wrap(mlflow.keras, "save_model", "save_model")
    if job.tracking_uri:
        mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_experiment(f"bench-tutorial-{job.workload.name}-{job.backend}")
    timings = []
    for index, config in enumerate(job.configs):
        params = config["params"]
        clock.reset()
        started = time.perf_counter()
        with clock.section("start_run"):
            mlflow.start_run(run_name=f"trial-{index + 1}")
        with clock.section("params"):
            mlflow.log_params(params)
            mlflow.set_tags(params)
        model, accuracy = _train(job, recipe, data, index + 1, params)
        with clock.section("epoch_metrics"):
            for name, values in model.history.history.items():
                for step, value in enumerate(values):
                    mlflow.log_metric(name, float(value), step=step)
        with clock.section("finish"):
            mlflow.log_metric("accuracy", accuracy)
        with clock.section("log_model"):
            mlflow.keras.log_model(model, name="model")
        with clock.section("finish"):
            mlflow.end_run()
        timings.append(TrialTiming(index, time.perf_counter() - started, clock.take()))
    return timings


def run_optuna(job: Job, recipe: Any, data: tuple[Any, ...], clock: Clock) -> list[TrialTiming]:
    """Optuna's MLflow integration; the fixed configurations are enqueued in order."""
    import keras
    import mlflow
    import mlflow.keras
    import optuna
    from optuna_integration.mlflow import MLflowCallback

    from tuning.signature import keras_requirements

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clock.wrap(mlflow.keras, "save_model", "save_model")
    clock.wrap(MLflowCallback, "__call__", "callback")
    clock.wrap(mlflow, "start_run", "start_run")  # the run is created by track_in_mlflow
    callback = MLflowCallback(tracking_uri=job.tracking_uri, metric_name="accuracy")
    distributions = recipe.template.distributions(recipe.namespace)

    class LiveMetrics(keras.callbacks.Callback):
        """The obvious live logging: one synchronous request per epoch, in fit's thread."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            with clock.section("epoch", keep=True), clock.section("epoch_metrics"):
                mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)

    @callback.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, d) for name, d in distributions.items()}
        model, accuracy = _train(job, recipe, data, trial.number + 1, params, LiveMetrics())
        with clock.section("log_model"):
            mlflow.keras.log_model(model, name="model", pip_requirements=keras_requirements())
        return accuracy

    started: list[float] = []
    timings: list[TrialTiming] = []

    def timed_objective(trial: optuna.Trial) -> float:
        clock.reset()
        started.append(time.perf_counter())
        return objective(trial)

    def trial_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        timings.append(TrialTiming(trial.number, time.perf_counter() - started[-1], clock.take()))

    study = optuna.create_study(study_name=f"bench-optuna-{job.workload.name}-{job.backend}",
                                direction="maximize")
    for config in job.configs:
        study.enqueue_trial(config["params"])
    study.optimize(timed_objective, n_trials=len(job.configs), callbacks=[callback, trial_done])
    for trial in study.trials:  # enqueued values must fit the distributions, else Optuna resamples
        assert trial.params == job.configs[trial.number]["params"], (trial.params, trial.number)
    return timings


def _suggest(trial: Any, name: str, distribution: Any) -> Any:
    """The Optuna equivalent of one of our (hyperas') distributions."""
    kind, args = distribution.kind, distribution.args
    if kind == "choice":
        return trial.suggest_categorical(name, list(args[0]))
    if kind == "uniform":
        return trial.suggest_float(name, args[0], args[1])
    if kind == "loguniform":
        return trial.suggest_float(name, math.exp(args[0]), math.exp(args[1]), log=True)
    if kind == "quniform" and distribution.is_integer:
        return trial.suggest_int(name, int(args[0]), int(args[1]), step=int(args[2]))
    raise NotImplementedError(f"no Optuna equivalent here for {distribution.describe()}")


def run_tuning(job: Job, recipe: Any, data: tuple[Any, ...], clock: Clock) -> list[TrialTiming]:
    """``tuning.minimize`` with its defaults, replaying the fixed configurations."""
    import mlflow.keras

    import tuning
    import tuning.study
    from tuning.keras_callback import EpochLog
    from tuning.sender import MetricSender
    from tuning.tracking import Tracker

    clock.wrap(Tracker, "start_run", "start_run")
    clock.wrap(Tracker, "log", "params")  # params+tags at the start, loss and test metrics at the end
    clock.wrap(Tracker, "log_keras_model", "log_model")
    clock.wrap(Tracker, "end_run", "finish")
    clock.wrap(MetricSender, "close", "finish")  # waits for the last epochs' metrics
    clock.wrap(mlflow.keras, "save_model", "save_model")
    clock.wrap(EpochLog, "add", "epoch", keep=True)  # all the training thread waits for per epoch

    timings: list[TrialTiming] = []
    run_trial = tuning.study.run_trial

    def timed_trial(setup: Any, number: int, params: dict[str, Any], raw: dict[str, Any]) -> Any:
        clock.reset()
        started = time.perf_counter()
        result = run_trial(setup, number, params, raw)
        timings.append(TrialTiming(number - 1, time.perf_counter() - started, clock.take()))
        assert params == job.configs[number - 1]["params"], (params, number)
        return result

    tuning.study.run_trial = timed_trial  # the study calls it by this module-level name
    study = tuning.minimize(recipe, lambda: data, max_evals=len(job.configs),
                            algo=replay([c["vals"] for c in job.configs]), seed=job.seed,
                            experiment=f"bench-tuning-{job.workload.name}-{job.backend}",
                            tracking_uri=job.tracking_uri)
    assert not study.failed, study.failed
    return timings


def replay(points: list[dict[str, Any]]) -> Callable[..., list[dict[str, Any]]]:
    """A hyperopt ``suggest`` function that proposes ``points`` (hyperopt's raw values) in order."""

    def suggest(new_ids: list[int], domain: Any, trials: Any, seed: int) -> list[dict[str, Any]]:
        docs = []
        for tid in new_ids:
            vals = points[tid]
            misc = {"tid": tid, "cmd": domain.cmd, "workdir": domain.workdir,
                    "idxs": {k: [tid] for k in vals}, "vals": {k: [v] for k, v in vals.items()}}
            docs += trials.new_trial_docs([tid], [None], [domain.new_result()], [misc])
        return docs

    return suggest


ARMS: dict[str, Callable[[Job, Any, tuple[Any, ...], Clock], list[TrialTiming]]] = {
    "bare": run_bare, "tutorial": run_tutorial, "optuna": run_optuna, "tuning": run_tuning}


if __name__ == "__main__":
    main()
