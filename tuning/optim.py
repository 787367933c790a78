"""A drop-in for ``hyperas.optim``: change one import, keep your script, gain MLflow tracking.

::

    from hyperopt import Trials, STATUS_OK, tpe
    from tuning import optim            # was: from hyperas import optim
    from hyperas.distributions import choice, uniform

    best_run, best_model = optim.minimize(model=create_model, data=data, algo=tpe.suggest,
                                          max_evals=5, trials=Trials())

Differences from hyperas, all on purpose: no ``temp_model.py`` is written; the model
function runs in its own module's namespace (so helpers and imports just work, and
``functions=`` / ``notebook_name=`` are accepted but not needed); ``best_model`` is the
best trial's model reloaded from MLflow (model objects are not kept in ``trials``, so
memory stays flat); every trial is an MLflow run in the experiment named by
``MLFLOW_EXPERIMENT_NAME``, else after the script.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hyperopt import Trials

from tuning.best import load_best
from tuning.recipe import Recipe
from tuning.study import StudyConfig, StudyResult, run_study
from tuning.tracking import Tracker


def minimize(model: Callable[..., Any], data: Callable[[], Any], algo: Callable[..., Any],
             max_evals: int, trials: Trials, functions: list[Callable[..., Any]] | None = None,
             rseed: int = 1337, notebook_name: str | None = None, verbose: bool = True,
             eval_space: bool = False, return_space: bool = False, keep_temp: bool = False,
             data_args: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """Same arguments and return values as ``hyperas.optim.minimize``.

    Returns ``(best_run, best_model)``, plus the hyperopt space with ``return_space``.
    ``best_run`` holds hyperopt's raw values (choice indices) unless ``eval_space``.
    """
    recipe, study = _search(model, data, algo, max_evals, trials, functions, rseed, verbose, data_args)
    best = study.best
    best_run = (dict(best.params) if best else {}) if eval_space else trials.argmin
    best_model = load_best(best.run_id, study.tracking_uri) if best else None
    if return_space:
        return best_run, best_model, recipe.template.space(recipe.namespace)
    return best_run, best_model


def best_models(nb_models: int, model: Callable[..., Any], data: Callable[[], Any],
                algo: Callable[..., Any], max_evals: int, trials: Trials) -> list[Any]:
    """The ``nb_models`` best trials' models, best first (``hyperas.optim.best_models``)."""
    _, study = _search(model, data, algo, max_evals, trials, None, 1337, True, None)
    ranked = sorted((t for t in study.trials if t.loss is not None), key=lambda t: t.loss)
    return [load_best(t.run_id, study.tracking_uri) for t in ranked[:nb_models]]


def _search(model: Callable[..., Any], data: Callable[[], Any], algo: Callable[..., Any],
            max_evals: int, trials: Trials, functions: list[Callable[..., Any]] | None,
            rseed: int, verbose: bool, data_args: tuple[Any, ...] | None) -> tuple[Recipe, StudyResult]:
    load = (lambda: data(*data_args)) if data_args else data
    recipe = Recipe.from_functions(model, load, functions)
    config = StudyConfig.merge(recipe, {
        "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME"), "max_evals": max_evals,
        "algo": algo, "seed": rseed, "progress": verbose})
    return recipe, run_study(recipe, config, Tracker(None), trials)
