"""The search driver: one MLflow study run around hyperopt's proposals (see :mod:`tuning.loop`).

hyperopt stays behind this module: trials come out as :class:`TrialResult` with real
values, never choice indices or ``t["misc"]["vals"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import Trials, anneal, rand, tpe

from tuning import history, pruners, signals, spark
from tuning.distributions import Distribution
from tuning.errors import ConfigurationError, TemplateError, TrackingError
from tuning.grid import Grid
from tuning.lease import Lease
from tuning.loop import Executor, InProcess, run_trials
from tuning.patience import DEFAULT_PATIENCE
from tuning.progress import RichReporter, SilentReporter
from tuning.pruners import Pruner, Pruning
from tuning.recipe import Recipe
from tuning.retention import KeepModels, ModelKeeper
from tuning.spark import Cluster
from tuning.stopping import StopReason, StopRules
from tuning.tpe import TPE
from tuning.tracking import LOSS_METRIC, SOURCE_FUNCTION_TAG, Tracker
from tuning.trial import (
    Objective,
    Reporter,
    TrialResult,
    TrialSetup,
    TrialStatus,
    run_trial,
    settle,
)
from tuning.worker import IsolatedRunner, Limits

ALGORITHMS: dict[str, Callable[..., Any]] = {"tpe": tpe.suggest, "rand": rand.suggest,
                                             "anneal": anneal.suggest}
GRID = "grid"  # not a hyperopt algorithm: its points depend on the space (tuning.grid)
DEFAULT_MAX_EVALS = 10


def minimize(recipe: str | Path | Callable[..., Any] | Recipe, data: Callable[[], Any] | None = None,
             *, max_evals: int | None = None, algo: str | Callable[..., Any] | None = None,
             seed: int | None = None,
             experiment: str | None = None, tracking_uri: str | None = None,
             objective: str | None = None, mode: str | None = None, log_model: bool = True,
             keep_models: str | KeepModels | None = None,
             max_epochs: int | None = None, progress: bool = True, resume: bool = False,
             force: bool = False,
             patience: float = DEFAULT_PATIENCE, trial_timeout: float | None = None,
             trial_max_memory: float | None = None, isolate: bool = False,
             fraction: float | None = None, timeout: float | None = None,
             early_stop: int | None = None, target: float | None = None,
             prune: str | Pruner | None = None, parallelism: int | None = None,
             spark_master: str | None = None, threads_per_trial: int | None = None,
             trials: Trials | None = None,
             callbacks: Sequence[Callable[[TrialResult], None]] = ()) -> StudyResult:
    """Search the hyperparameters of a templated model; track every trial in MLflow.

    ``recipe`` is a recipe file's path, or a ``model`` function written with ``{{…}}``
    markers (then ``data`` is its data function). ``algo`` is ``"tpe"``, ``"rand"``,
    ``"anneal"``, ``"grid"`` (every combination of discrete markers, or a random
    ``fraction`` of them; ``max_evals`` then defaults to all of them) or any hyperopt
    ``suggest`` function. Arguments left as None take the recipe's constants
    (``MAX_EVALS``, ``ALGO`` …), then the defaults. ``max_epochs`` (or
    ``TUNING_MAX_EPOCHS``) caps every ``fit`` for a quick run. With ``progress=True`` a
    progress bar replaces Keras' own per-epoch output. ``keep_models`` (``"all"``,
    ``"best:N"``, ``"none"``; or ``KEEP_MODELS``) says which trials keep their logged model;
    see :mod:`tuning.retention`.

    The study ends early at ``timeout`` seconds, after ``early_stop`` trials without
    improvement, or once the objective reaches ``target`` (see :mod:`tuning.stopping`).
    ``prune`` (``"median"``, ``"hyperband"`` or a :class:`tuning.pruners.Pruner`) stops
    hopeless trials between epochs. ``resume`` continues the newest unfinished study of
    the recipe, unless a live process still holds it (``force`` takes it over).
    ``parallelism`` runs that many trials at a time on Spark (``spark_master``, a
    notebook's active session, or ``local[N]``), each limited to ``threads_per_trial``
    threads; see :mod:`tuning.spark`.

    Example::

        import tuning
        study = tuning.minimize("recipes/digits_cnn.py", max_evals=5, seed=1)
        print(study.best.params, study.best.loss)
        model = tuning.load_best(study.experiment)
    """
    recipe = Recipe.of(recipe, data)
    config = StudyConfig.merge(recipe, dict(
        max_evals=max_evals, algo=algo, seed=seed, experiment=experiment, objective=objective,
        mode=mode, log_model=log_model, keep_models=keep_models, max_epochs=max_epochs,
        progress=progress, resume=resume,
        force=force,
        trial_timeout=trial_timeout, trial_max_memory=trial_max_memory, isolate=isolate,
        fraction=fraction, timeout=timeout, early_stop=early_stop, target=target, prune=prune,
        parallelism=parallelism, spark_master=spark_master, threads_per_trial=threads_per_trial))
    return run_study(recipe, config, Tracker(tracking_uri, patience), trials, callbacks)


@dataclass(frozen=True)
class StudyResult:
    """A finished study: where it is tracked, its trials and the best one."""

    tracking_uri: str
    experiment_id: str
    experiment: str
    run_id: str
    seed: int
    trials: tuple[TrialResult, ...]
    space: dict[str, Distribution]
    stop_reason: StopReason | None = None  # None: the study could not be closed (store away)
    stop_detail: str = ""
    objective: Objective = Objective()

    @property
    def best(self) -> TrialResult | None:
        ok = [t for t in self.trials if t.status is TrialStatus.OK and t.loss is not None]
        return min(ok, key=lambda t: t.loss) if ok else None  # type: ignore[arg-type, return-value]

    @property
    def failed(self) -> tuple[TrialResult, ...]:
        """Trials that failed or were killed (pruned trials are neither)."""
        return tuple(t for t in self.trials if t.status in (TrialStatus.FAILED, TrialStatus.KILLED))

    @property
    def pruned(self) -> tuple[TrialResult, ...]:
        return tuple(t for t in self.trials if t.status is TrialStatus.PRUNED)


@dataclass(frozen=True)
class StudyConfig:
    """The settings of one study after recipe defaults and overrides are merged."""

    experiment: str | None  # an argument or the recipe's EXPERIMENT; None: see Tracker.choose_experiment
    max_evals: int | None  # None: every point of the grid
    algo: str | Callable[..., Any]
    seed: int
    objective: Objective
    fraction: float = 1.0  # the share of the grid that runs (algo "grid")
    timeout: float | None = None
    early_stop: int | None = None
    target: float | None = None
    pruner: Pruner | None = None
    cluster: Cluster | None = None  # set: trials run on Spark, this many at a time
    log_model: bool = True
    keep_models: KeepModels = KeepModels()
    max_epochs: int | None = None
    progress: bool = True
    resume: bool = False
    force: bool = False  # resume a study whose lease is alive (its holder is known to be gone)
    limits: Limits | None = None  # set: each trial runs in a watched worker process
    explicit: frozenset[str] = frozenset()  # settings given as flags/arguments, not defaults

    @classmethod
    def merge(cls, recipe: Recipe, overrides: dict[str, Any]) -> StudyConfig:
        """Overrides (flags, keyword arguments) win over the recipe's constants."""
        def pick(key: str, default: Any) -> Any:
            value = overrides.get(key.lower())
            return value if value is not None else recipe.defaults.get(key, default)

        algo = pick("ALGO", "tpe")
        if isinstance(algo, str) and algo not in (*ALGORITHMS, GRID):
            raise ConfigurationError(f"unknown algorithm {algo!r}: choose one of "
                                     f"{', '.join(ALGORITHMS)}, {GRID}")
        fraction = overrides.get("fraction")
        if fraction is not None and algo != GRID:
            raise ConfigurationError("fraction samples a share of a grid: use it with algo 'grid' "
                                     "(--algo grid)")
        # A grid runs all its points unless a budget is given for it: a flag, or the
        # recipe's MAX_EVALS when the recipe itself chose the grid.
        budget = overrides.get("max_evals")
        if budget is None and (algo != GRID or recipe.defaults.get("ALGO") == GRID):
            budget = recipe.defaults.get("MAX_EVALS", None if algo == GRID else DEFAULT_MAX_EVALS)
        if budget is not None and int(budget) < 1:
            raise ConfigurationError(f"max_evals must be at least 1, got {budget}")
        seed = pick("SEED", None)
        max_epochs = overrides.get("max_epochs") or os.environ.get("TUNING_MAX_EPOCHS")
        keep_models = KeepModels.parse(pick("KEEP_MODELS", "all"))
        return cls(
            experiment=None if pick("EXPERIMENT", None) is None else str(pick("EXPERIMENT", None)),
            max_evals=None if budget is None else int(budget), algo=algo,
            seed=int(seed) if seed is not None else secrets.randbelow(2**31),
            objective=Objective.create(pick("OBJECTIVE", None), pick("MODE", None)),
            fraction=1.0 if fraction is None else float(fraction),
            timeout=overrides.get("timeout"), early_stop=overrides.get("early_stop"),
            target=overrides.get("target"), pruner=pruners.create(overrides.get("prune")),
            cluster=_cluster(overrides),
            log_model=overrides.get("log_model", True) and keep_models.best != 0, keep_models=keep_models,
            max_epochs=int(max_epochs) if max_epochs else None,
            progress=overrides.get("progress", True),
            resume=bool(overrides.get("resume")),
            force=_force(overrides),
            limits=_limits(overrides),
            explicit=frozenset(k for k, v in overrides.items() if v is not None),
        )

    def resumed(self, params: dict[str, str]) -> StudyConfig:
        """This config with the settings a resumed study was started with."""
        stored = {"algo": params.get("algo"), "seed": params.get("seed"),
                  "objective": params.get("objective"), "mode": params.get("mode"),
                  "fraction": params.get("fraction", "1.0")}
        mine = {"algo": self.algo_name, "seed": str(self.seed),
                "objective": self.objective.metric, "mode": self.objective.mode,
                "fraction": str(self.fraction)}
        clash = [k for k in stored if k in self.explicit and stored[k] != mine[k]]
        if clash:
            raise ConfigurationError(f"the study being resumed was run with "
                             f"{', '.join(f'{k}={stored[k]}' for k in clash)}; leave out "
                             f"{', '.join('--' + k for k in clash)} or start a new study without --resume")
        algo = stored["algo"] if stored["algo"] in (*ALGORITHMS, GRID) else self.algo
        return dataclasses.replace(self, algo=algo, seed=int(stored["seed"] or self.seed),
                                   objective=Objective.create(stored["objective"], stored["mode"]),
                                   fraction=float(stored["fraction"]))

    @property
    def algo_name(self) -> str:
        """``tpe`` for ``"tpe"`` and for ``tpe.suggest``; else the function's module."""
        if isinstance(self.algo, str):
            return self.algo
        names = {f: n for n, f in ALGORITHMS.items()}
        function = getattr(self.algo, "func", self.algo)  # functools.partial(tpe.suggest, …)
        return names.get(function) or getattr(function, "__module__", "custom").rsplit(".", 1)[-1]


def run_study(recipe: Recipe, config: StudyConfig, tracker: Tracker, trials: Trials | None = None,
              callbacks: Sequence[Callable[[TrialResult], None]] = ()) -> StudyResult:
    """Run the search: check everything, then one study run with a child run per trial."""
    if getattr(trials, "asynchronous", False):  # MongoTrials: its workers would wait for jobs forever
        raise ConfigurationError(
            f"{type(trials).__name__} hands trials to hyperopt's own workers, which cannot run a model "
            "compiled here: pass Trials() (or none), and parallelism=N to run trials side by side")
    tracker.check()
    distributions = recipe.template.distributions(recipe.namespace)
    if not distributions:
        raise TemplateError("no hyperparameters to tune: write markers such as "
                            "<<uniform(0, 1)>> or {{choice([32, 64])}} in model()",
                            recipe.template.filename)
    space = {name: d.to_hyperopt(name) for name, d in distributions.items()}
    if config.algo == GRID:
        Grid(recipe.template, distributions)  # a continuous marker fails here, before any run
    rules = StopRules(config.objective, config.timeout, config.early_stop, config.target)
    session, own_session = None, False
    if config.cluster is not None:
        spark.check_store(tracker.uri)
        session, own_session = spark.session(config.cluster)
    # With workers or executors, each loads the data itself; here it would only take memory.
    data = recipe.load_data() if config.limits is None and config.cluster is None else ()
    experiment_id, experiment = tracker.choose_experiment(config.experiment, recipe.name)
    config = dataclasses.replace(config, experiment=experiment)
    trials = trials if trials is not None else Trials()
    study_run_id, config, past, lease = _open_study(tracker, experiment_id, recipe, config, distributions,
                                                    trials)
    results = list(past.results)
    suggest, config = _search(recipe, distributions, config)
    if isinstance(suggest, Grid):
        suggest.proposed = past.proposals
    tags = {"tuning.max_evals": config.max_evals, "tuning.max_epochs": config.max_epochs, **lease.tags}
    if config.pruner is not None:
        tags["tuning.pruner"] = repr(config.pruner)  # e.g. MedianPruner(startup_trials=5, …)
    if config.log_model:
        tags["tuning.keep_models"] = str(config.keep_models)
    keeper = ModelKeeper(config.keep_models, tracker, past.results)
    tracker.log(study_run_id, tags=tags)
    pruning = Pruning(config.pruner) if config.pruner else None
    if pruning is not None:
        pruning.load(tracker.client, [(r.number, r.run_id, r.status is TrialStatus.OK)
                                      for r in results if r.loss is not None],
                     config.objective.curve_keys, config.objective.loss(1.0))

    best = min((r.loss for r in results if r.status is TrialStatus.OK and r.loss is not None), default=None)
    reporter: Reporter = (RichReporter(config.max_evals, done=len(results), best=best,
                                       objective=config.objective) if config.progress else SilentReporter())
    setup = TrialSetup(tracker, experiment_id, study_run_id, recipe, data, config.objective,
                       reporter, seed=config.seed, log_model=config.log_model,
                       quiet_fit=config.progress, max_epochs=config.max_epochs, pruning=pruning,
                       retries=past.retries)

    def record(result: TrialResult) -> None:
        results.append(result)
        if pruning is not None and result.status in (TrialStatus.OK, TrialStatus.PRUNED):
            pruning.record(result.number, result.curve, complete=result.status is TrialStatus.OK)
        keeper.record(result)
        for callback in callbacks:
            callback(result)
        # The trial's garbage collected, what outlives it frozen: each collection then walks one
        # trial's objects, not every object of every trial so far (TensorFlow keeps some).
        settle()
        signals.check()  # a stop requested during the trial, that Python dropped

    rng = np.random.default_rng(config.seed)
    for _ in range(past.proposals):  # go on with the stream where it stopped: hyperopt draws
        rng.integers(2**31 - 1)      # one seed per proposal, as fmin does (tuning.loop)

    def ended(result: TrialResult) -> bool:
        record(result)
        return rules.check(results)

    runner: IsolatedRunner | None = None
    executor: Executor
    if session is None:
        runner = IsolatedRunner(setup, config.limits) if config.limits is not None else None
        executor = InProcess(runner or functools.partial(run_trial, setup))
        running: Any = nullcontext()
    else:
        executor = spark.SparkExecutor(session, config.cluster.parallelism, setup, pruning)
        running = spark.cancelling_on_interrupt(session)
    search = functools.partial(run_trials, space, suggest, trials, config.max_evals, rng, executor,
                               list(distributions), ended)

    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    lease.start()
    settle()  # until the study ends
    status, reason = "FAILED", StopReason.MAX_EVALS
    try:
        signals.check()
        with reporter if isinstance(reporter, RichReporter) else nullcontext(), running:
            search()
        status = "FINISHED"
        if rules.reason is not None:
            reason = rules.reason
        elif isinstance(suggest, Grid) and len(results) >= len(suggest):
            reason = StopReason.GRID_DONE
    except KeyboardInterrupt:
        signals.handled()
        status, reason = "KILLED", StopReason.INTERRUPTED
        raise
    except TrackingError:
        status = ""  # the store is away: nothing more can be written; --resume cleans up
        reason = StopReason.TRACKING
        raise
    finally:
        lease.close()
        gc.unfreeze()
        if runner is not None:
            runner.close()
        if session is not None:
            if status:  # cancelled Spark tasks leave their runs RUNNING
                history.end_orphans(tracker, experiment_id, study_run_id, "stopped with the study")
            if own_session:
                session.stop()
        result = StudyResult(tracker.uri, experiment_id, config.experiment, study_run_id,
                             config.seed, tuple(results), distributions, reason,
                             rules.detail or _stop_detail(reason, len(results)), config.objective)
        if status:
            _finish(tracker, result, status)
    return result


def _search(recipe: Recipe, distributions: dict[str, Distribution],
            config: StudyConfig) -> tuple[Callable[..., Any], StudyConfig]:
    """hyperopt's suggest function, and the config with its trial budget settled."""
    if config.algo == GRID:
        grid = Grid(recipe.template, distributions, config.fraction, config.seed)
        budget = min(config.max_evals or len(grid), len(grid))
        return grid, dataclasses.replace(config, max_evals=budget)
    suggest = ALGORITHMS[config.algo] if isinstance(config.algo, str) else config.algo
    function = getattr(suggest, "func", suggest)  # functools.partial(tpe.suggest, n_startup_jobs=…)
    if function is tpe.suggest and not getattr(suggest, "args", ()):
        # The same proposals as hyperopt's for the same seed, at a cost that barely grows.
        return TPE(**getattr(suggest, "keywords", {})), config
    return suggest, config


def _stop_detail(reason: StopReason, trials: int) -> str:
    budget = "the budget's one trial ran" if trials == 1 else f"all {trials} trials of the budget ran"
    return {StopReason.MAX_EVALS: budget,
            StopReason.GRID_DONE: f"every one of the grid's {trials} points ran",
            StopReason.INTERRUPTED: "interrupted",
            StopReason.TRACKING: "the tracking server stayed away"}.get(reason, "")


def _force(overrides: dict[str, Any]) -> bool:
    if overrides.get("force") and not overrides.get("resume"):
        raise ConfigurationError("--force takes over a study that --resume finds still held: use both")
    return bool(overrides.get("force"))


def _cluster(overrides: dict[str, Any]) -> Cluster | None:
    """Where parallel trials run, from the parallelism / spark_master / threads settings."""
    parallelism = overrides.get("parallelism")
    if parallelism is None:
        if overrides.get("spark_master") or overrides.get("threads_per_trial"):
            raise ConfigurationError("--spark-master and --threads-per-trial go with --parallelism N")
        return None
    if parallelism < 1:
        raise ConfigurationError(f"parallelism must be at least 1, got {parallelism}")
    if _limits(overrides) is not None:
        raise ConfigurationError("--parallelism runs trials on Spark executors: it does not combine with "
                         "--trial-timeout, --trial-max-memory or --isolate")
    return Cluster(parallelism, overrides.get("spark_master"), overrides.get("threads_per_trial"))


def _limits(overrides: dict[str, Any]) -> Limits | None:
    """Worker limits from the trial_timeout / trial_max_memory / isolate settings."""
    seconds, memory = overrides.get("trial_timeout"), overrides.get("trial_max_memory")
    if seconds is None and memory is None and not overrides.get("isolate"):
        return None
    return Limits(seconds=seconds, memory_mb=memory)


def _open_study(tracker: Tracker, experiment_id: str, recipe: Recipe, config: StudyConfig,
                distributions: dict[str, Distribution], trials: Trials
                ) -> tuple[str, StudyConfig, history.History, Lease]:
    """A new study run, or with ``resume`` the newest unfinished one, its trials rebuilt;
    held by this process (see :mod:`tuning.lease`)."""
    key = _recipe_key(recipe)
    previous = history.unfinished_study(tracker, experiment_id, key) if config.resume else None
    if previous is not None:
        config = config.resumed(previous.data.params)
        run_id = previous.info.run_id
        lease = Lease.take(tracker, previous, config.force)  # before anything of it is touched
        tracker.client.update_run(run_id, status="RUNNING")
        past = history.rebuild(tracker, experiment_id, run_id, trials)
        resumes = int(previous.data.tags.get("tuning.resumes", "0")) + 1
        tracker.log(run_id, tags={"tuning.resumes": resumes})
        return run_id, config, past, lease
    params = {"algo": config.algo_name, "seed": config.seed,
              "objective": config.objective.metric, "mode": config.objective.mode}
    if config.algo == GRID:
        params["fraction"] = config.fraction
    if config.cluster is not None:
        params["parallelism"] = config.cluster.parallelism
    run_id = start_study_run(tracker, experiment_id, recipe, distributions, params)
    return run_id, config, history.History([], 0, ()), Lease(tracker, run_id)


def start_study_run(tracker: Tracker, experiment_id: str, recipe: Recipe,
                    distributions: dict[str, Distribution], params: dict[str, Any],
                    tags: dict[str, str] | None = None) -> str:
    """A new study run: the recipe and ``params`` as params, the space, the recipe's source."""
    key = _recipe_key(recipe)
    # The model function's name: with the file, tuning.load_best finds the recipe's own
    # losses, layers and metrics when a model is reloaded in another process.
    run_id = tracker.start_run(experiment_id, f"study-{time.strftime('%Y%m%d-%H%M%S')}", "study",
                               tracker.outer_run(experiment_id),
                               tags={"tuning.recipe": key, SOURCE_FUNCTION_TAG: recipe.template.function,
                                     **(tags or {})})
    tracker.log(run_id, params={"recipe": key, **params})
    tracker.log_json(run_id, _describe(recipe, distributions), "space.json")
    tracker.log_text(run_id, recipe.template.source, f"recipe/{_source_name(recipe)}")
    return run_id


def _recipe_key(recipe: Recipe) -> str:
    """How a study names its recipe: the absolute path of its file."""
    name = recipe.template.filename
    return name if name.startswith("<") else str(Path(name).resolve())


def _finish(tracker: Tracker, result: StudyResult, status: str) -> None:
    best = result.best
    summary: dict[str, float] = {"trials_ok": len(result.trials) - len(result.failed) - len(result.pruned),
                                 "trials_failed": len(result.failed), "trials_pruned": len(result.pruned)}
    tags: dict[str, Any] = {}
    if best is not None:
        summary[f"best_{LOSS_METRIC}"] = best.loss  # type: ignore[assignment]
        tags = {"tuning.best_run_id": best.run_id, "tuning.best_trial": best.number,
                **{f"best.{k}": v for k, v in best.params.items()}}
    elif status == "FINISHED":
        status = "FAILED"
        tags["tuning.error"] = f"all {len(result.trials)} trials failed"
    tags.update({"tuning.stop_reason": result.stop_reason, "tuning.stop_detail": result.stop_detail})
    tracker.log(result.run_id, metrics=summary, tags=tags)
    if status != "KILLED":  # whoever pressed Ctrl-C waits for no plots; a resumed study draws them
        from tuning.report import attach_report  # never raises: a plot must not fail a search

        try:
            signals.check()
            attach_report(result)
        except KeyboardInterrupt:  # --resume draws it: every trial is done, the budget spent
            tracker.log(result.run_id, tags={"tuning.stop_reason": StopReason.INTERRUPTED,
                                             "tuning.stop_detail": "interrupted while drawing the report"})
            tracker.end_run(result.run_id, "KILLED")
            raise
    tracker.end_run(result.run_id, status)


def _describe(recipe: Recipe, distributions: dict[str, Distribution]) -> dict[str, Any]:
    lines = {m.name: m.line for m in recipe.template.markers}
    return {name: {"distribution": d.describe(), "line": lines[name], "integer": d.is_integer,
                   "values": d.grid} for name, d in distributions.items()}


def _source_name(recipe: Recipe) -> str:
    name = Path(recipe.template.filename).name
    return name if name.endswith(".py") and not name.startswith("<") else "model.py"
