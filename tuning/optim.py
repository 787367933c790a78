"""A drop-in for ``hyperas.optim``: change one import, keep your script, gain MLflow tracking.

::

    from hyperopt import Trials, STATUS_OK, tpe
    from tuning import optim            # was: from hyperas import optim
    from hyperas.distributions import choice, uniform

    best_run, best_model = optim.minimize(model=create_model, data=data, algo=tpe.suggest,
                                          max_evals=5, trials=Trials())

Differences from hyperas, all on purpose (README, "From hyperas", lists them all): no
``temp_model.py`` is written; the model function runs in its own module's namespace
(plus the names ``data()`` defines, as in hyperas), so ``functions=`` and
``notebook_name=`` are accepted but not needed (a notebook's name is its studies'
experiment); ``best_model`` is reloaded from MLflow
(model objects are not kept in ``trials``, so memory stays flat); every trial is an
MLflow run in the store and experiment the script chose with MLflow's own calls or
variables, else ``./mlflow.db`` and the script's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperopt import Trials

from tuning.best import load_best
from tuning.distributions import complete_hyperas
from tuning.ensemble import VotingModel
from tuning.errors import NoTrialsError
from tuning.recipe import Recipe
from tuning.settings import StudyConfig
from tuning.study import run_study
from tuning.study_run import StudyResult
from tuning.tracking import Tracker
from tuning.trial import TrialResult

__all__ = ["VotingModel", "best_ensemble", "best_models", "minimize"]

complete_hyperas()  # the script's next line may be `from hyperas.distributions import conditional`


def minimize(model: Callable[..., Any], data: Callable[..., Any], algo: Callable[..., Any],
             max_evals: int, trials: Trials, functions: list[Callable[..., Any]] | None = None,
             rseed: int = 1337, notebook_name: str | None = None, verbose: bool = True,
             eval_space: bool = False, return_space: bool = False, keep_temp: bool = False,
             data_args: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """Same arguments and return values as ``hyperas.optim.minimize``.

    Returns ``(best_run, best_model)``, plus the hyperopt space with ``return_space``.
    ``best_run`` holds hyperopt's raw values (choice indices) unless ``eval_space``.
    If every trial fails, the first trial's exception is raised, as hyperas raises it.
    """
    recipe, study = _search(model, data, algo, max_evals, trials, functions, rseed, verbose, data_args,
                            notebook_name)
    best = study.best
    best_run = dict(best.params) if eval_space and best else trials.argmin
    best_model = _load(best, study, recipe) if best else None
    if return_space:
        return best_run, best_model, recipe.template.space(recipe.namespace)
    return best_run, best_model


def best_models(nb_models: int, model: Callable[..., Any], data: Callable[..., Any],
                algo: Callable[..., Any], max_evals: int, trials: Trials,
                functions: list[Callable[..., Any]] | None = None, keep_temp: bool = False) -> list[Any]:
    """The models of the ``nb_models`` best trials, best first (``hyperas.optim.best_models``)."""
    recipe, study = _search(model, data, algo, max_evals, trials, functions, 1337, True, None)
    ranked = sorted((t for t in study.trials if t.loss is not None and t.model_logged),
                    key=lambda t: t.loss)  # type: ignore[arg-type, return-value]
    return [_load(t, study, recipe) for t in ranked[:nb_models]]


def best_ensemble(nb_ensemble_models: int, model: Callable[..., Any], data: Callable[..., Any],
                  algo: Callable[..., Any], max_evals: int, trials: Trials, voting: str = "hard",
                  weights: list[float] | None = None, nb_classes: int | None = None,
                  functions: list[Callable[..., Any]] | None = None) -> VotingModel:
    """A :class:`VotingModel` of the best trials' models (``hyperas.optim.best_ensemble``)."""
    models = best_models(nb_ensemble_models, model, data, algo, max_evals, trials, functions)
    return VotingModel(models, voting, weights, nb_classes)


def _search(model: Callable[..., Any], data: Callable[..., Any], algo: Callable[..., Any],
            max_evals: int, trials: Trials, functions: list[Callable[..., Any]] | None,
            rseed: int, verbose: bool, data_args: tuple[Any, ...] | None,
            notebook_name: str | None = None) -> tuple[Recipe, StudyResult]:
    recipe = Recipe.from_functions(model, data, functions)
    recipe.data_args = tuple(data_args or ())
    recipe.notebook = notebook_name
    config = StudyConfig.merge(recipe, max_evals=max_evals, algo=algo, seed=rseed, progress=verbose)
    study = run_study(recipe, config, Tracker(None), trials)
    if study.best is None:
        failure = next((t.exception for t in study.trials if t.exception is not None), None)
        if failure is not None:
            raise failure  # as hyperas would; its traceback points into the model function
        raise NoTrialsError(f"all {len(study.trials)} trials failed"
                            + (f"; first error: {study.trials[0].error}" if study.trials else ""))
    return recipe, study


def _load(trial: TrialResult, study: StudyResult, recipe: Recipe) -> Any:
    if not trial.model_logged:
        return None
    return load_best(trial.run_id, study.tracking_uri, recipe.custom_objects())
