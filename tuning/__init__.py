"""tuning: Keras model functions with templated hyperparameters, searched with hyperopt,
every trial tracked in MLflow.

Example::

    import tuning
    study = tuning.minimize("recipes/digits_cnn.py", max_evals=5)
    model = tuning.load_best(study.experiment)
    tuning.pbt("recipes/diabetes_regression.py", population=8, rounds=5)  # population based training

Names are imported on first use, so that ``import tuning`` (and the ``tuning`` command)
does not import Keras before the backend is chosen.

The public surface is ``tuning.__all__`` and the ``__all__`` of the modules users reach into
(``tuning.pruners``, ``tuning.stopping``, ``tuning.objective``, ``tuning.best``,
``tuning.report``, ``tuning.settings`` …). Everything else, and every module without ``__all__`` (``loop``,
``history``, ``lease``, ``tracking`` …), is this package's own and may change.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# The name on the package index (``pip install keras-mlflow-tuning``): "tuning" there is
# an unrelated project. The import name and the command stay ``tuning``.
DISTRIBUTION = "keras-mlflow-tuning"

if TYPE_CHECKING:
    from tuning.best import best_runs, load_best, register_best
    from tuning.cluster import Cluster
    from tuning.errors import (
        ConfigurationError,
        NoTrialsError,
        RecipeError,
        TemplateError,
        TrackingError,
        TuningError,
    )
    from tuning.population import pbt
    from tuning.pruners import HyperbandPruner, MedianPruner, Pruner
    from tuning.report import Report, study_report
    from tuning.stopping import StopRules
    from tuning.study import minimize
    from tuning.study_run import StudyResult
    from tuning.template import Template, assigned
    from tuning.trial import TrialOptions, TrialResult, TrialStatus
    from tuning.worker import Limits

_EXPORTS = {
    "best_runs": "tuning.best", "load_best": "tuning.best", "register_best": "tuning.best",
    "Report": "tuning.report", "study_report": "tuning.report",
    "ConfigurationError": "tuning.errors", "NoTrialsError": "tuning.errors", "RecipeError": "tuning.errors",
    "TemplateError": "tuning.errors", "TrackingError": "tuning.errors",
    "TuningError": "tuning.errors",
    "pbt": "tuning.population",
    "HyperbandPruner": "tuning.pruners", "MedianPruner": "tuning.pruners", "Pruner": "tuning.pruners",
    "Cluster": "tuning.cluster", "StopRules": "tuning.stopping", "minimize": "tuning.study",
    "StudyResult": "tuning.study_run", "Limits": "tuning.worker",
    "Template": "tuning.template", "assigned": "tuning.template",
    "TrialOptions": "tuning.trial", "TrialResult": "tuning.trial", "TrialStatus": "tuning.trial",
}
__all__ = [
    "Cluster", "ConfigurationError", "HyperbandPruner", "Limits", "MedianPruner", "NoTrialsError", "Pruner",
    "RecipeError", "Report", "StopRules", "StudyResult", "Template", "TemplateError", "TrackingError",
    "TrialOptions", "TrialResult", "TrialStatus", "TuningError", "assigned", "best_runs", "load_best",
    "minimize", "pbt", "register_best", "study_report",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if importlib.util.find_spec(f"tuning.{name}") is not None:  # tuning.pruners.MedianPruner(...)
        return importlib.import_module(f"tuning.{name}")
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")
