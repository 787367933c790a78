"""Questions about finished studies: the best trials, reloading and registering their models."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Experiment, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tuning.errors import NoTrialsError, TrackingError
from tuning.fluent import quiet_downloads, using_uri
from tuning.objective import Objective
from tuning.quiet import tensorflow_start_up
from tuning.recipe import custom_objects, run_file
from tuning.template import Template
from tuning.tracking import KIND_TAG, LOSS_METRIC, MODEL_DELETED_TAG, SOURCE_FUNCTION_TAG, Tracker

__all__ = [  # the rest is this package's own
    "CHAMPION", "best_runs", "load_best", "model_uri", "objectives", "register_best",
]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_URIS = ("runs:/", "models:/")  # loadable as they are
CHAMPION = "champion"  # the alias ``--register`` moves to the newest best model


def best_runs(experiment: str, top: int = 1, tracking_uri: str | None = None,
              study_run_id: str | None = None) -> list[Run]:
    """The ``top`` finished trials of ``experiment`` (all its studies), best first.

    Example::

        for run in tuning.best_runs("digits_cnn", top=3):
            print(run.info.run_id, run.data.metrics["hyperopt_loss"], run.data.params)
    """
    return _best_runs(Tracker.reader(tracking_uri), experiment, top, study_run_id)


def _best_runs(tracker: Tracker, experiment: str, top: int, study_run_id: str | None = None) -> list[Run]:
    found = find_experiment(tracker, experiment)
    query = f"tags.`{KIND_TAG}` = 'trial' and attributes.status = 'FINISHED'"
    if study_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{study_run_id}'"
    runs = list(tracker.runs(found.experiment_id, query, limit=top,  # a tie: the earlier
                             order_by=[f"metrics.{LOSS_METRIC} ASC", "attributes.start_time ASC"]))
    if not runs:
        raise NoTrialsError(f"experiment {experiment!r} has no finished trial yet")
    return runs


def objectives(runs: list[Run], tracking_uri: str | None = None) -> dict[str, Objective]:
    """The objective each trial run was judged by: its study's ``objective`` and ``mode``.

    ``best_runs`` sorts by hyperopt's loss; this says what that loss means to a person
    (a trial of population based training or a search alike).
    """
    tracker = Tracker.reader(tracking_uri)
    studies: dict[str, Objective] = {}
    for parent in {run.data.tags.get(MLFLOW_PARENT_RUN_ID, "") for run in runs} - {""}:
        params = tracker.run(parent).data.params
        studies[parent] = Objective.create(params.get("objective"), params.get("mode"))
    return {run.info.run_id: studies.get(run.data.tags.get(MLFLOW_PARENT_RUN_ID, ""), Objective())
            for run in runs}


def find_experiment(tracker: Tracker, name: str) -> Experiment:
    """Experiment ``name``, or an error listing the experiments the store has."""
    found = tracker.experiment(name)
    if found is None:
        names = tracker.experiment_names()
        raise NoTrialsError(f"no experiment {name!r} in {tracker.uri} "
                            f"(experiments: {', '.join(names) or 'none'})")
    return found


def model_uri(which: str, tracking_uri: str | None = None) -> str:
    """A loadable model URI for an experiment name, a run id, or a ``runs:/``/``models:/`` URI."""
    return which if which.startswith(_MODEL_URIS) else _model_uri(Tracker.reader(tracking_uri), which)


def _model_uri(tracker: Tracker, which: str) -> str:
    if which.startswith(_MODEL_URIS):
        return which
    if _RUN_ID.match(which):
        try:
            tracker.run(which)
            return f"runs:/{which}/model"
        except MlflowException:
            pass  # not a run id after all: try it as an experiment name
    return f"runs:/{_best_runs(tracker, which, 1)[0].info.run_id}/model"


def register_best(experiment: str, name: str, tracking_uri: str | None = None,
                  alias: str = CHAMPION) -> ModelVersion:
    """Register the model of ``experiment``'s best trial as a new version of ``name``.

    The version gets ``alias`` (``champion``), so ``models:/NAME@champion`` always loads
    the latest registered best, whichever study found it.

    Example::

        version = tuning.register_best("digits_cnn", "digits")
        model = tuning.load_best("models:/digits@champion")
    """
    tracker = Tracker.reader(tracking_uri)
    run = _best_runs(tracker, experiment, 1)[0]
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise NoTrialsError(f"the best trial of {experiment!r} (run {run.info.run_id}) has no "
                            "logged model: it was run with --no-model")
    tags = {"tuning.experiment": experiment, LOSS_METRIC: str(run.data.metrics[LOSS_METRIC])}
    try:
        return tracker.register(name, outputs[-1].model_id, run.info.run_id, tags, alias)
    except MlflowException as error:
        raise TrackingError(f"cannot register the model of run {run.info.run_id} as {name!r}: "
                            f"{error.message}") from None


def load_best(which: str, tracking_uri: str | None = None,
              custom_objects: Mapping[str, Any] | None = None) -> Any:
    """Reload a trial's Keras model: the best of an experiment, a run id, or a model URI.

    A model that uses functions or classes of the recipe itself (a loss, a metric, a
    ``Lambda``'s function, a layer) is reloaded with ``custom_objects``, or else with
    those of the recipe file its study recorded: the file is run as a module of its own
    (its ``if __name__ == "__main__":`` part does not run), so it must still be there.

    Example::

        model = tuning.load_best("digits_cnn")        # or "models:/digits@champion"
        model.predict(x_test[:5])
    """
    with tensorflow_start_up():  # a new process's first Keras import: no TensorFlow chatter
        import keras  # noqa: F401 - MLflow's loader imports it only when it loads
        import mlflow.keras

    tracker = Tracker.reader(tracking_uri)
    uri = _model_uri(tracker, which)
    # MLflow downloads the model into a temporary folder it never deletes (mlflow#887):
    # a copy per load, left in /tmp. Keras reads the whole file, so ours goes once loaded.
    with (using_uri(tracker.uri), quiet_downloads(),  # MLflow's loader reads the process-wide URI
          tempfile.TemporaryDirectory(prefix="tuning-model-") as folder):
        try:
            try:
                return mlflow.keras.load_model(uri, folder, custom_objects)
            except (TypeError, ValueError):  # Keras: "Could not locate function 'contrastive_loss'"
                objects = None if custom_objects is not None else _recipe_objects(tracker, uri)
                if not objects:
                    raise
                return mlflow.keras.load_model(uri, folder, objects)
        except (MlflowException, OSError, TypeError, ValueError) as error:
            why = _deleted(tracker, uri) or error
            raise TrackingError(f"cannot load the model at {uri}: {why}") from None


def _deleted(tracker: Tracker, uri: str) -> str | None:
    """Why the model at ``uri`` is gone, if keep-models deleted it (its run says why)."""
    try:
        reason = tracker.run(tracker.model_source_run(uri)).data.tags.get(MODEL_DELETED_TAG)
    except (MlflowException, TrackingError):
        return None
    return f"it was deleted ({reason}); the best trial's model is kept" if reason else None


def _recipe_objects(tracker: Tracker, uri: str) -> dict[str, Any]:
    """The functions and classes that the recipe file the model's study recorded defines or imports."""
    try:
        run = tracker.run(tracker.model_source_run(uri))
        study = tracker.run(run.data.tags[MLFLOW_PARENT_RUN_ID]).data.tags
        path, function = study["tuning.recipe"], study[SOURCE_FUNCTION_TAG]
    except (MlflowException, KeyError):
        return {}
    if not Path(path).is_file():
        return {}
    return custom_objects(run_file(Template.from_file(path, function)))
