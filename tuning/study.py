"""The search driver: one MLflow study run around ``hyperopt.fmin``.

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
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import Trials, anneal, fmin, pyll, rand, tpe
from hyperopt.exceptions import AllTrialsFailed

from tuning import history
from tuning.distributions import Distribution
from tuning.errors import TemplateError, TrackingError
from tuning.progress import RichReporter, SilentReporter
from tuning.recipe import Recipe
from tuning.tracking import DEFAULT_PATIENCE, LOSS_METRIC, Tracker
from tuning.trial import Objective, Reporter, TrialResult, TrialSetup, TrialStatus, run_trial
from tuning.worker import IsolatedRunner, Limits

ALGORITHMS: dict[str, Callable[..., Any]] = {"tpe": tpe.suggest, "rand": rand.suggest,
                                             "anneal": anneal.suggest}
DEFAULT_MAX_EVALS = 10


def minimize(recipe: str | Path | Callable[..., Any] | Recipe, data: Callable[[], Any] | None = None,
             *, max_evals: int | None = None, algo: str | Callable[..., Any] | None = None,
             seed: int | None = None,
             experiment: str | None = None, tracking_uri: str | None = None,
             objective: str | None = None, mode: str | None = None, log_model: bool = True,
             max_epochs: int | None = None, progress: bool = True, resume: bool = False,
             patience: float = DEFAULT_PATIENCE, trial_timeout: float | None = None,
             trial_max_memory: float | None = None, isolate: bool = False,
             trials: Trials | None = None,
             callbacks: Sequence[Callable[[TrialResult], None]] = ()) -> StudyResult:
    """Search the hyperparameters of a templated model; track every trial in MLflow.

    ``recipe`` is a recipe file's path, or a ``model`` function written with ``{{…}}``
    markers (then ``data`` is its data function). ``algo`` is ``"tpe"``, ``"rand"``,
    ``"anneal"`` or any hyperopt ``suggest`` function. Arguments left as None take the
    recipe's constants (``MAX_EVALS``, ``ALGO`` …), then the defaults. ``max_epochs``
    (or ``TUNING_MAX_EPOCHS``) caps every ``fit`` for a quick run. With ``progress=True``
    a progress bar replaces Keras' own per-epoch output.

    Example::

        import tuning
        study = tuning.minimize("recipes/digits_cnn.py", max_evals=5, seed=1)
        print(study.best.params, study.best.loss)
        model = tuning.load_best(study.experiment)
    """
    if isinstance(recipe, str | Path):
        recipe = Recipe.from_file(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.from_functions(recipe, data)
    if data is not None:
        recipe.data = data
    config = StudyConfig.merge(recipe, dict(
        max_evals=max_evals, algo=algo, seed=seed, experiment=experiment, objective=objective,
        mode=mode, log_model=log_model, max_epochs=max_epochs, progress=progress, resume=resume,
        trial_timeout=trial_timeout, trial_max_memory=trial_max_memory, isolate=isolate))
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

    @property
    def best(self) -> TrialResult | None:
        ok = [t for t in self.trials if t.status is TrialStatus.OK and t.loss is not None]
        return min(ok, key=lambda t: t.loss) if ok else None  # type: ignore[arg-type, return-value]

    @property
    def failed(self) -> tuple[TrialResult, ...]:
        return tuple(t for t in self.trials if t.status is not TrialStatus.OK)


@dataclass(frozen=True)
class StudyConfig:
    """The settings of one study after recipe defaults and overrides are merged."""

    experiment: str
    max_evals: int
    algo: str | Callable[..., Any]
    seed: int
    objective: Objective
    log_model: bool = True
    max_epochs: int | None = None
    progress: bool = True
    resume: bool = False
    limits: Limits | None = None  # set: each trial runs in a watched worker process
    explicit: frozenset[str] = frozenset()  # settings given as flags/arguments, not defaults

    @classmethod
    def merge(cls, recipe: Recipe, overrides: dict[str, Any]) -> StudyConfig:
        """Overrides (flags, keyword arguments) win over the recipe's constants."""
        def pick(key: str, default: Any) -> Any:
            value = overrides.get(key.lower())
            return value if value is not None else recipe.defaults.get(key, default)

        algo = pick("ALGO", "tpe")
        if isinstance(algo, str) and algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algo!r}: choose one of {', '.join(ALGORITHMS)}")
        max_evals = int(pick("MAX_EVALS", DEFAULT_MAX_EVALS))
        if max_evals < 1:
            raise ValueError(f"max_evals must be at least 1, got {max_evals}")
        seed = pick("SEED", None)
        max_epochs = overrides.get("max_epochs") or os.environ.get("TUNING_MAX_EPOCHS")
        return cls(
            experiment=str(pick("EXPERIMENT", recipe.name)),
            max_evals=max_evals, algo=algo,
            seed=int(seed) if seed is not None else secrets.randbelow(2**31),
            objective=Objective.create(pick("OBJECTIVE", None), pick("MODE", None)),
            log_model=overrides.get("log_model", True),
            max_epochs=int(max_epochs) if max_epochs else None,
            progress=overrides.get("progress", True),
            resume=bool(overrides.get("resume")),
            limits=_limits(overrides),
            explicit=frozenset(k for k, v in overrides.items() if v is not None),
        )

    def resumed(self, params: dict[str, str]) -> StudyConfig:
        """This config with the settings a resumed study was started with."""
        stored = {"algo": params.get("algo"), "seed": params.get("seed"),
                  "objective": params.get("objective"), "mode": params.get("mode")}
        mine = {"algo": self.algo_name, "seed": str(self.seed),
                "objective": self.objective.metric, "mode": self.objective.mode}
        clash = [k for k in stored if k in self.explicit and stored[k] != mine[k]]
        if clash:
            raise ValueError(f"the study being resumed was run with "
                             f"{', '.join(f'{k}={stored[k]}' for k in clash)}; leave out "
                             f"{', '.join('--' + k for k in clash)} or start a new study without --resume")
        algo = stored["algo"] if stored["algo"] in ALGORITHMS else self.algo
        return dataclasses.replace(self, algo=algo, seed=int(stored["seed"] or self.seed),
                                   objective=Objective.create(stored["objective"], stored["mode"]))

    @property
    def suggest(self) -> Callable[..., Any]:
        return ALGORITHMS[self.algo] if isinstance(self.algo, str) else self.algo

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
    tracker.check()
    distributions = recipe.template.distributions(recipe.namespace)
    if not distributions:
        raise TemplateError("no hyperparameters to tune: write markers such as "
                            "<<uniform(0, 1)>> or {{choice([32, 64])}} in model()",
                            recipe.template.filename)
    space = {name: d.to_hyperopt(name) for name, d in distributions.items()}
    # With workers, each loads the data itself; here it would only take memory.
    data = recipe.load_data() if config.limits is None else ()
    experiment_id = tracker.experiment_id(config.experiment)
    trials = trials if trials is not None else Trials()
    study_run_id, config, results = _open_study(tracker, experiment_id, recipe, config,
                                                distributions, trials)

    reporter: Reporter = (RichReporter(config.max_evals, done=len(results)) if config.progress
                          else SilentReporter())
    setup = TrialSetup(tracker, experiment_id, study_run_id, recipe, data, config.objective,
                       reporter, seed=config.seed, log_model=config.log_model,
                       quiet_fit=config.progress, max_epochs=config.max_epochs)

    runner: Callable[[int, dict[str, Any], dict[str, Any]], TrialResult] = (
        functools.partial(run_trial, setup) if config.limits is None
        else IsolatedRunner(setup, config.limits))

    def objective(expr: Any, memo: Any, ctrl: Any) -> dict[str, Any]:
        values = pyll.rec_eval(expr, memo=memo)
        params = {name: _plain(values[name]) for name in distributions}  # recipe order
        raw = {k: _plain(v[0]) for k, v in ctrl.current_trial["misc"]["vals"].items() if v}
        result = runner(ctrl.current_trial["tid"] + 1, params, raw)
        results.append(result)
        for callback in callbacks:
            callback(result)
        return result.to_hyperopt()

    objective.fmin_pass_expr_memo_ctrl = True  # type: ignore[attr-defined]
    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    # Everything alive now (TensorFlow, MLflow, the data) lives as long as the study:
    # moving it out of the collector's sight makes the collection after each trial
    # take milliseconds instead of a third of a second.
    gc.collect()
    gc.freeze()
    status = "FAILED"
    try:
        with reporter if isinstance(reporter, RichReporter) else nullcontext(), \
                suppress(AllTrialsFailed):  # failed trials are reported in the result
            fmin(objective, space, algo=config.suggest, max_evals=config.max_evals,
                 trials=trials,
                 rstate=np.random.default_rng(config.seed), show_progressbar=False,
                 return_argmin=False)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except TrackingError:
        status = ""  # the store is away: nothing more can be written; --resume cleans up
        raise
    finally:
        gc.unfreeze()
        if isinstance(runner, IsolatedRunner):
            runner.close()
        result = StudyResult(tracker.uri, experiment_id, config.experiment, study_run_id,
                             config.seed, tuple(results), distributions)
        if status:
            _finish(tracker, result, status)
    return result


def _limits(overrides: dict[str, Any]) -> Limits | None:
    """Worker limits from the trial_timeout / trial_max_memory / isolate settings."""
    seconds, memory = overrides.get("trial_timeout"), overrides.get("trial_max_memory")
    if seconds is None and memory is None and not overrides.get("isolate"):
        return None
    return Limits(seconds=seconds, memory_mb=memory)


def _open_study(tracker: Tracker, experiment_id: str, recipe: Recipe, config: StudyConfig,
                distributions: dict[str, Distribution], trials: Trials
                ) -> tuple[str, StudyConfig, list[TrialResult]]:
    """A new study run, or with ``resume`` the newest unfinished one, its trials rebuilt."""
    key = _recipe_key(recipe)
    previous = history.unfinished_study(tracker, experiment_id, key) if config.resume else None
    if previous is not None:
        config = config.resumed(previous.data.params)
        run_id = previous.info.run_id
        tracker.client.update_run(run_id, status="RUNNING")
        results = history.rebuild(tracker, experiment_id, run_id, trials)
        resumes = int(previous.data.tags.get("tuning.resumes", "0")) + 1
        tracker.log(run_id, tags={"tuning.max_evals": config.max_evals, "tuning.resumes": resumes,
                                  "tuning.max_epochs": config.max_epochs})
        return run_id, config, results
    run_id = tracker.start_run(experiment_id, f"study-{time.strftime('%Y%m%d-%H%M%S')}", "study",
                               tags={"tuning.recipe": key})
    tracker.log(run_id, params={"recipe": key, "algo": config.algo_name, "seed": config.seed,
                                "objective": config.objective.metric, "mode": config.objective.mode},
                tags={"tuning.max_evals": config.max_evals, "tuning.max_epochs": config.max_epochs})
    tracker.log_json(run_id, _describe(recipe, distributions), "space.json")
    tracker.log_text(run_id, recipe.template.source, f"recipe/{_source_name(recipe)}")
    return run_id, config, []


def _recipe_key(recipe: Recipe) -> str:
    """How a study names its recipe: the absolute path of its file."""
    name = recipe.template.filename
    return name if name.startswith("<") else str(Path(name).resolve())


def _finish(tracker: Tracker, result: StudyResult, status: str) -> None:
    best = result.best
    summary: dict[str, float] = {"trials_ok": len(result.trials) - len(result.failed),
                                 "trials_failed": len(result.failed)}
    tags: dict[str, Any] = {}
    if best is not None:
        summary[f"best_{LOSS_METRIC}"] = best.loss  # type: ignore[assignment]
        tags = {"tuning.best_run_id": best.run_id, "tuning.best_trial": best.number,
                **{f"best.{k}": v for k, v in best.params.items()}}
    elif status == "FINISHED":
        status = "FAILED"
        tags["tuning.error"] = f"all {len(result.trials)} trials failed"
    tracker.log(result.run_id, metrics=summary, tags=tags)
    if status != "KILLED":  # whoever pressed Ctrl-C waits for no plots; a resumed study draws them
        from tuning.report import attach_report  # never raises: a plot must not fail a search

        attach_report(result.tracking_uri, result.experiment, result.run_id)
    tracker.end_run(result.run_id, status)


def _describe(recipe: Recipe, distributions: dict[str, Distribution]) -> dict[str, Any]:
    lines = {m.name: m.line for m in recipe.template.markers}
    return {name: {"distribution": d.describe(), "line": lines[name], "integer": d.is_integer,
                   "values": d.grid} for name, d in distributions.items()}


def _source_name(recipe: Recipe) -> str:
    name = Path(recipe.template.filename).name
    return name if name.endswith(".py") and not name.startswith("<") else "model.py"


def _plain(value: Any) -> Any:
    """numpy scalars to Python values, so tags read ``64`` and Keras gets an ``int``."""
    return value.item() if isinstance(value, np.generic) else value


def grid_size(distributions: dict[str, Distribution]) -> int | None:
    """How many combinations the space has, or None when a parameter is continuous."""
    size = 1
    for d in distributions.values():
        values = d.grid
        if values is None:
            return None
        size *= len(values)
    return size

