"""The search: hyperopt's proposals, one MLflow study run, a child run per trial.

:func:`minimize` checks and merges the settings (:mod:`tuning.settings`) and hands off to
:func:`run_study`; the trial loop is :mod:`tuning.loop`, the study run's start and end
:mod:`tuning.study_run`. hyperopt stays behind these modules: trials come out as
:class:`TrialResult` with real values, never choice indices or ``t["misc"]["vals"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import Trials, tpe

from tuning import cluster as clusters
from tuning import history, signals, spark
from tuning.cluster import Cluster
from tuning.distributions import Distribution
from tuning.errors import ConfigurationError, TemplateError
from tuning.fluent import resolve_uri
from tuning.grid import Grid
from tuning.loop import Executor, InProcess, run_trials
from tuning.objective import Objective
from tuning.patience import DEFAULT_PATIENCE
from tuning.progress import RichReporter, SilentReporter
from tuning.pruners import Curve, Pruner, Pruning
from tuning.recipe import Recipe
from tuning.retention import KeepModels, ModelKeeper
from tuning.settings import ALGORITHMS, GRID, StudyConfig, spark_cluster, stop_rules, worker_limits
from tuning.stopping import StopReason, StopRules, ended_by, stop_detail
from tuning.study_run import StudyResult, StudyRun, open_study
from tuning.tpe import TPE
from tuning.tracking import Tracker
from tuning.trial import Reporter, TrialResult, TrialSetup, TrialStatus, run_trial, settle
from tuning.worker import IsolatedRunner, Limits

__all__ = ["minimize", "run_study", "StudyConfig", "StudyResult"]


def minimize(recipe: str | Path | Callable[..., Any] | Recipe, data: Callable[[], Any] | None = None,
             *, max_evals: int | None = None, algo: str | Callable[..., Any] | None = None,
             seed: int | None = None, experiment: str | None = None, tracking_uri: str | None = None,
             objective: str | None = None, mode: str | None = None, log_model: bool = True,
             keep_models: str | KeepModels | None = None, max_epochs: int | None = None,
             progress: bool = True, resume: bool = False, force: bool = False,
             patience: float = DEFAULT_PATIENCE, fraction: float | None = None,
             stop: StopRules | None = None, prune: str | Pruner | None = None,
             limits: Limits | None = None, cluster: Cluster | None = None,
             timeout: float | None = None, early_stop: int | None = None, target: float | None = None,
             trial_timeout: float | None = None, trial_max_memory: float | None = None,
             isolate: bool = False, parallelism: int | None = None, spark_master: str | None = None,
             threads_per_trial: int | None = None, trials: Trials | None = None,
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

    ``stop`` (:class:`tuning.stopping.StopRules`, or flat: ``timeout`` seconds,
    ``early_stop`` trials without improvement, ``target`` objective) ends the study early.
    ``prune`` (``"median"``, ``"hyperband"`` or a :class:`tuning.pruners.Pruner`) stops
    hopeless trials between epochs. ``limits`` (:class:`tuning.worker.Limits`, or flat:
    ``trial_timeout``, ``trial_max_memory``, ``isolate``) runs each trial in a watched worker
    process. ``cluster`` (:class:`tuning.cluster.Cluster`, or flat: ``parallelism``,
    ``spark_master``, ``threads_per_trial``) runs that many trials at a time on Spark (a
    master, a notebook's active session, or ``local[N]``); see :mod:`tuning.spark`.
    ``resume`` continues the newest unfinished study of the recipe, unless a live process
    still holds it (``force`` takes it over).

    Example::

        import tuning
        study = tuning.minimize("recipes/digits_cnn.py", max_evals=5, seed=1,
                                stop=tuning.StopRules(early_stop=3))
        print(study.best.params, study.best.loss)
        model = tuning.load_best(study.experiment)
    """
    cluster = spark_cluster(cluster, parallelism, spark_master, threads_per_trial)
    with clusters.starting_early(cluster, recipe if data is None else None, None, resolve_uri(tracking_uri)):
        recipe = Recipe.of(recipe, data, tracking_uri)  # meanwhile Spark workers load it too
        config = StudyConfig.merge(
            recipe, max_evals=max_evals, algo=algo, seed=seed, experiment=experiment, objective=objective,
            mode=mode, fraction=fraction, log_model=log_model, keep_models=keep_models, max_epochs=max_epochs,
            progress=progress, resume=resume, force=force, prune=prune,
            stop=stop_rules(stop, timeout, early_stop, target),
            limits=worker_limits(limits, trial_timeout, trial_max_memory, isolate), cluster=cluster)
        return run_study(recipe, config, Tracker(tracking_uri, patience), trials, callbacks)


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
    if config.algo == GRID:
        Grid(recipe.template, distributions)  # a continuous marker fails here, before any run
    rules = dataclasses.replace(config.stop)  # the study's own copy: its clock starts now
    session, own_session = None, False
    if config.cluster is not None:
        clusters.check_store(tracker.uri)
        session, own_session = clusters.session(config.cluster)
    # With workers or executors, each loads the data itself; here it would only take memory.
    data = recipe.load_data() if config.limits is None and config.cluster is None else ()
    experiment_id, experiment = tracker.choose_experiment(config.experiment, recipe.name)
    trials = trials if trials is not None else Trials()
    opened = open_study(tracker, experiment_id, recipe, dataclasses.replace(config, experiment=experiment),
                        distributions, trials)
    suggest, config = _search(recipe, distributions, opened.config)
    past = opened.past
    if isinstance(suggest, Grid):
        suggest.proposed = past.proposals
    rules.objective = config.objective  # a resumed study's, as it was started
    # Spark's executors may run on hosts whose clocks are a little off this one's.
    snapshot = history.Snapshot(tracker, opened.run_id, past,
                                str(config.keep_models) if config.trial.log_model else "none",
                                clock_margin=60.0 if config.cluster is not None else 1.0)
    ledger = _Ledger(config, rules, tracker, opened.run_id, past.results, snapshot, callbacks)
    reporter: Reporter = (RichReporter(config.max_evals or 0, done=len(past.results), best=ledger.best(),
                                       objective=config.objective) if config.progress else SilentReporter())
    setup = TrialSetup(tracker, experiment_id, opened.run_id, recipe, data, config.trial, reporter,
                       retries=past.retries)
    rng = np.random.default_rng(config.seed)
    for _ in range(past.proposals):  # go on with the stream where it stopped: hyperopt draws
        rng.integers(2**31 - 1)      # one seed per proposal, as fmin does (tuning.loop)

    def conclude(status: str) -> StudyResult:
        reason = ended_by(status, StopReason.MAX_EVALS)
        if status == "FINISHED" and ledger.rules.reason is not None:
            reason = ledger.rules.reason
        elif status == "FINISHED" and isinstance(suggest, Grid) and len(ledger.results) >= len(suggest):
            reason = StopReason.GRID_DONE
        return StudyResult(tracker.uri, experiment_id, experiment, opened.run_id, config.seed,
                           tuple(ledger.results), distributions, reason,
                           ledger.rules.detail or stop_detail(reason, len(ledger.results)), config.objective)

    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    space = {name: d.to_hyperopt(name) for name, d in distributions.items()}
    with ExitStack() as stack:
        study_run = stack.enter_context(StudyRun(tracker, opened.run_id, conclude, opened.lease, snapshot))
        signals.check()  # a stop requested while the study started, that Python dropped
        executor = stack.enter_context(_executor(setup, config, ledger.pruning, session, own_session))
        stack.enter_context(reporter if isinstance(reporter, RichReporter) else nullcontext())
        run_trials(space, suggest, trials, config.max_evals or 0, rng, executor, list(distributions),
                   snapshot.started, ledger.ended)
    return study_run.result  # type: ignore[return-value]  # set as the block ends


class _Ledger:
    """The study's results as they arrive, and what learns from each: the stop rules, the
    pruner, the model keeper, the history snapshot and the caller's callbacks."""

    def __init__(self, config: StudyConfig, rules: StopRules, tracker: Tracker, study_run_id: str,
                 past: list[TrialResult], snapshot: history.Snapshot,
                 callbacks: Sequence[Callable[[TrialResult], None]]):
        self.results = list(past)
        self.snapshot = snapshot
        self.rules = rules
        self.keeper = ModelKeeper(config.keep_models, tracker, past)
        self.callbacks = callbacks
        self.pruning = Pruning(config.pruner) if config.pruner else None
        tags: dict[str, Any] = {"tuning.max_evals": config.max_evals,
                                "tuning.max_epochs": config.trial.max_epochs}
        if self.pruning is not None:
            tags["tuning.pruner"] = repr(config.pruner)  # e.g. MedianPruner(startup_trials=5, …)
            self.pruning.load((r.number, _curve(tracker, r.run_id, config.objective),
                               r.status is TrialStatus.OK) for r in past if r.loss is not None)
        if config.trial.log_model:
            tags["tuning.keep_models"] = str(config.keep_models)
        tracker.log(study_run_id, tags=tags)

    def best(self) -> float | None:
        return min((r.loss for r in self.results if r.status is TrialStatus.OK and r.loss is not None),
                   default=None)

    def ended(self, result: TrialResult) -> bool:
        """Record a trial's result; whether the study should start no further trial."""
        self.results.append(result)
        if self.pruning is not None and result.status in (TrialStatus.OK, TrialStatus.PRUNED):
            self.pruning.record(result.number, result.curve, complete=result.status is TrialStatus.OK)
        self.snapshot.ended(result)
        for run_id in self.keeper.record(result):
            self.snapshot.model_deleted(run_id)
        for callback in self.callbacks:
            callback(result)
        # The trial's garbage collected, what outlives it frozen: each collection then walks one
        # trial's objects, not every object of every trial so far (TensorFlow keeps some).
        settle()
        signals.check()  # a stop requested during the trial, that Python dropped
        return self.rules.check(self.results)


def _curve(tracker: Tracker, run_id: str, objective: Objective) -> Curve:
    """A past trial's learning curve, as a loss, from the first of the objective's metric
    names that it logged per epoch."""
    for key in objective.curve_keys:
        if history := tracker.metric_history(run_id, key):
            # The first value of each epoch: a model's own mlflow.keras.MlflowCallback logs
            # the epochs again, and numbers a second fit's from 0 where tuning's go on.
            first: dict[int, float] = {}
            for point in sorted(history, key=lambda m: (m.step, m.timestamp)):
                first.setdefault(point.step, point.value)
            return tuple(objective.loss(value) for value in first.values())
    return ()


@contextmanager
def _executor(setup: TrialSetup, config: StudyConfig, pruning: Pruning | None, session: Any,
              own_session: bool) -> Iterator[Executor]:
    """Where the trials run: here, in a watched worker process, or on Spark; closed after."""
    if session is not None:
        with spark.executing(session, own_session, setup, config.cluster.parallelism,  # type: ignore[union-attr]
                             pruning) as executor:
            yield executor
    elif config.limits is None:
        yield InProcess(functools.partial(run_trial, setup, pruning=pruning))
    else:
        runner = IsolatedRunner(setup, config.limits, pruning)
        try:
            yield InProcess(runner)
        finally:
            runner.close()


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
