"""A study's settings: the caller's arguments over the recipe's constants over the defaults.

Settings travel as typed objects, not a dict read back by key: :class:`StudyConfig` holds
the study's own choices and the objects the package already has for the rest
(:class:`~tuning.stopping.StopRules`, :class:`~tuning.worker.Limits`,
:class:`~tuning.cluster.Cluster`, a :class:`~tuning.pruners.Pruner`), and one
:class:`~tuning.trial.TrialOptions` that the study hands to its trials, a worker process and
a Spark task (which turns Keras' own output off: executors' logs are no terminal).

Example::

    >>> from tuning.recipe import Recipe
    >>> recipe = Recipe.from_file("recipes/digits_cnn.py")  # MAX_EVALS = 10, OBJECTIVE = "accuracy"
    >>> config = StudyConfig.merge(recipe, seed=1, objective="val_loss")
    >>> config.max_evals, config.algo, config.trial.objective.mode, config.trial.seed
    (10, 'tpe', 'min', 1)
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperopt import anneal, rand, tpe

from tuning import pruners
from tuning.cluster import Cluster
from tuning.errors import ConfigurationError
from tuning.objective import Objective
from tuning.pruners import Pruner
from tuning.recipe import Recipe
from tuning.retention import KeepModels
from tuning.stopping import StopRules
from tuning.trial import TrialOptions
from tuning.worker import Limits

__all__ = ["StudyConfig"]  # the rest is this package's own

ALGORITHMS: dict[str, Callable[..., Any]] = {"tpe": tpe.suggest, "rand": rand.suggest,
                                             "anneal": anneal.suggest}
GRID = "grid"  # not a hyperopt algorithm: its points depend on the space (tuning.grid)
DEFAULT_MAX_EVALS = 10
MAX_EPOCHS_VARIABLE = "TUNING_MAX_EPOCHS"  # read here only: the CLI's --max-epochs passes None through

# Settings a resumed study keeps from its first start; given again with another value, they clash.
_KEPT_ON_RESUME = ("algo", "seed", "objective", "mode", "fraction")


@dataclass(frozen=True)
class StudyConfig:
    """The settings of one study after recipe defaults and overrides are merged."""

    experiment: str | None  # an argument or the recipe's EXPERIMENT; None: see Tracker.choose_experiment
    max_evals: int | None  # None: every point of the grid
    algo: str | Callable[..., Any]
    trial: TrialOptions  # objective, seed, model logging, epochs: the same for every trial
    fraction: float = 1.0  # the share of the grid that runs (algo "grid")
    stop: StopRules = field(default_factory=StopRules)
    pruner: Pruner | None = None
    cluster: Cluster | None = None  # set: trials run on Spark, this many at a time
    limits: Limits | None = None  # set: each trial runs in a watched worker process
    keep_models: KeepModels = KeepModels()
    progress: bool = True
    resume: bool = False
    force: bool = False  # resume a study whose lease is alive (its holder is known to be gone)
    explicit: frozenset[str] = frozenset()  # of _KEPT_ON_RESUME, those given as flags/arguments

    @property
    def seed(self) -> int:
        return self.trial.seed  # type: ignore[return-value]  # merge always draws one

    @property
    def objective(self) -> Objective:
        return self.trial.objective

    @classmethod
    def merge(cls, recipe: Recipe, *, max_evals: int | None = None,
              algo: str | Callable[..., Any] | None = None,
              seed: int | None = None, experiment: str | None = None, objective: str | None = None,
              mode: str | None = None, fraction: float | None = None, log_model: bool = True,
              keep_models: str | KeepModels | None = None, max_epochs: int | None = None,
              progress: bool = True, resume: bool = False, force: bool = False,
              stop: StopRules | None = None, prune: str | Pruner | None = None,
              cluster: Cluster | None = None, limits: Limits | None = None) -> StudyConfig:
        """Arguments (flags, keyword arguments) win over the recipe's constants; None means not given."""
        def pick(key: str, value: Any, default: Any = None) -> Any:
            return value if value is not None else recipe.defaults.get(key, default)

        given = dict(algo=algo, seed=seed, objective=objective, mode=mode, fraction=fraction)
        algo = pick("ALGO", algo, "tpe")
        if isinstance(algo, str) and algo not in (*ALGORITHMS, GRID):
            raise ConfigurationError(f"unknown algorithm {algo!r}: choose one of "
                                     f"{', '.join(ALGORITHMS)}, {GRID}")
        if fraction is not None and algo != GRID:
            raise ConfigurationError("fraction samples a share of a grid: use it with algo 'grid' "
                                     "(--algo grid)")
        # A grid runs all its points unless a budget is given for it: a flag, or the
        # recipe's MAX_EVALS when the recipe itself chose the grid.
        budget = max_evals
        if budget is None and (algo != GRID or recipe.defaults.get("ALGO") == GRID):
            budget = recipe.defaults.get("MAX_EVALS", None if algo == GRID else DEFAULT_MAX_EVALS)
        if budget is not None and int(budget) < 1:
            raise ConfigurationError(f"max_evals must be at least 1, got {budget}")
        if force and not resume:
            raise ConfigurationError("--force takes over a study that --resume finds still held: use both")
        if cluster is not None and limits is not None:
            raise ConfigurationError("--parallelism runs trials on Spark executors: it does not combine "
                                     "with --trial-timeout, --trial-max-memory or --isolate")
        keep = KeepModels.parse(pick("KEEP_MODELS", keep_models, "all"))
        drawn = pick("SEED", seed)
        if drawn is not None and int(drawn) < 0:  # numpy's generators, which hyperopt draws from
            raise ConfigurationError(f"seed must be 0 or more, got {drawn}")
        epochs = _max_epochs(max_epochs)
        named = pick("EXPERIMENT", experiment)
        return cls(
            experiment=None if named is None else str(named),
            max_evals=None if budget is None else int(budget), algo=algo,
            trial=TrialOptions(Objective.create(pick("OBJECTIVE", objective), pick("MODE", mode)),
                               int(drawn) if drawn is not None else secrets.randbelow(2**31),
                               log_model=log_model and keep.best != 0, quiet_fit=progress,
                               max_epochs=epochs),
            fraction=1.0 if fraction is None else float(fraction),
            stop=stop or StopRules(),  # the study runs a copy with its objective (tuning.study)
            pruner=pruners.create(prune), cluster=cluster, limits=limits, keep_models=keep,
            progress=progress, resume=resume, force=force,
            explicit=frozenset(k for k, v in given.items() if v is not None))

    def resumed(self, params: dict[str, str]) -> StudyConfig:
        """This config with the settings a resumed study was started with."""
        stored = {"algo": params.get("algo"), "seed": params.get("seed"),
                  "objective": params.get("objective"), "mode": params.get("mode"),
                  "fraction": params.get("fraction", "1.0")}
        mine = {"algo": self.algo_name, "seed": str(self.seed),
                "objective": self.objective.metric, "mode": self.objective.mode,
                "fraction": str(self.fraction)}
        clash = [k for k in _KEPT_ON_RESUME if k in self.explicit and stored[k] != mine[k]]
        if clash:
            raise ConfigurationError(f"the study being resumed was run with "
                             f"{', '.join(f'{k}={stored[k]}' for k in clash)}; leave out "
                             f"{', '.join('--' + k for k in clash)} or start a new study without --resume")
        # The study's own algorithm: this one when it is the same (a partial(tpe.suggest, …)
        # keeps its arguments), else the one stored by name.
        same = self.algo_name == stored["algo"] or stored["algo"] not in (*ALGORITHMS, GRID)
        algo = self.algo if same else str(stored["algo"])
        objective = Objective.create(stored["objective"], stored["mode"])
        trial = dataclasses.replace(self.trial, seed=int(stored["seed"] or self.seed), objective=objective)
        return dataclasses.replace(self, algo=algo, trial=trial, fraction=float(stored["fraction"] or 1.0))

    @property
    def algo_name(self) -> str:
        """``tpe`` for ``"tpe"`` and for ``tpe.suggest``; else the function's module."""
        if isinstance(self.algo, str):
            return self.algo
        names = {f: n for n, f in ALGORITHMS.items()}
        function = getattr(self.algo, "func", self.algo)  # functools.partial(tpe.suggest, …)
        return names.get(function) or getattr(function, "__module__", "custom").rsplit(".", 1)[-1]


def _max_epochs(given: int | None) -> int | None:
    """The argument, else ``TUNING_MAX_EPOCHS`` (a quick run of every study in a shell)."""
    value = given if given is not None else os.environ.get(MAX_EPOCHS_VARIABLE) or None
    try:
        epochs = None if value is None else int(value)
    except ValueError:
        epochs = 0
    if epochs is not None and epochs < 1:
        source = "max_epochs" if given is not None else MAX_EPOCHS_VARIABLE
        raise ConfigurationError(f"{source} must be a whole number of epochs, at least 1; got {value!r}")
    return epochs


def stop_rules(stop: StopRules | None, timeout: float | None, early_stop: int | None,
               target: float | None) -> StopRules | None:
    """The study's limits: the object, or the same from the flat arguments (not both)."""
    return _one("stop", stop, StopRules, timeout=timeout, early_stop=early_stop, target=target)


def worker_limits(limits: Limits | None, trial_timeout: float | None, trial_max_memory: float | None,
                  isolate: bool) -> Limits | None:
    """Worker limits: the object, or the same from the flat arguments; None: trials run here."""
    if limits is None and isolate and trial_timeout is None and trial_max_memory is None:
        return Limits()
    return _one("limits", limits, Limits, seconds=trial_timeout, memory_mb=trial_max_memory)


def spark_cluster(cluster: Cluster | None, parallelism: int | None, spark_master: str | None,
                  threads_per_trial: int | None) -> Cluster | None:
    """Where parallel trials run: the object, or the same from the flat arguments."""
    if cluster is None and parallelism is None and (spark_master or threads_per_trial):
        raise ConfigurationError("--spark-master and --threads-per-trial go with --parallelism N")
    return _one("cluster", cluster, Cluster, parallelism=parallelism, master=spark_master,
                threads_per_trial=threads_per_trial)


def _one(name: str, given: Any, kind: type, **flat: Any) -> Any:
    """``given``, or a ``kind`` built from the flat arguments that are set; never both."""
    flat = {k: v for k, v in flat.items() if v is not None}
    if given is not None and flat:
        raise ConfigurationError(f"{name}= and {', '.join(flat)}= say the same thing twice: give one")
    return given if given is not None or not flat else kind(**flat)
