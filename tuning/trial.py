"""One trial: a child run, the user's model function, its metrics, model and loss.

The run's status tells the truth: FINISHED, FAILED (the user's code raised, or the
objective is NaN; the traceback is attached as ``error.txt``) or KILLED (interrupted).
A failed trial is reported to hyperopt as ``status: fail`` and the search goes on.
"""

from __future__ import annotations

import enum
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol

import keras

from tuning.errors import TrackingError
from tuning.keras_callback import EpochLog, recording
from tuning.recipe import Recipe
from tuning.template import assigned
from tuning.tracking import LOSS_METRIC, Tracker, fluent_run

_ACCURACY_ALIASES = {"accuracy": ("acc", "categorical_accuracy", "sparse_categorical_accuracy",
                                  "binary_accuracy", "compile_metrics")}


class TrialStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    KILLED = "killed"


@dataclass(frozen=True)
class Objective:
    """What a trial is judged by: ``metric`` (e.g. ``accuracy``, ``val_loss``) and ``mode``.

    Names starting with ``val_`` come from the last epoch of the last ``fit``; other names
    are measured by ``model.evaluate(x_test, y_test)`` (falling back to the last epoch).
    """

    metric: str = "accuracy"
    mode: str = "max"

    @classmethod
    def create(cls, metric: str | None = None, mode: str | None = None) -> Objective:
        metric = metric or "accuracy"
        if mode is None:
            mode = "min" if any(w in metric for w in ("loss", "error", "mse", "mae")) else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        return cls(metric, mode)

    def loss(self, value: float) -> float:
        """The value hyperopt minimises."""
        return -value if self.mode == "max" else value

    def find(self, *sources: dict[str, float]) -> float | None:
        names = (self.metric, *_ACCURACY_ALIASES.get(self.metric, ()))
        for source in sources:
            for name in names:
                if name in source:
                    return source[name]
        return None


@dataclass(frozen=True)
class TrialResult:
    """What one trial produced, in plain values (no hyperopt dicts, no model objects)."""

    number: int
    run_id: str
    status: TrialStatus
    params: dict[str, Any]
    loss: float | None = None
    error: str | None = None
    seconds: float = 0.0

    def to_hyperopt(self) -> dict[str, Any]:
        if self.status is TrialStatus.OK:
            return {"status": "ok", "loss": self.loss, "run_id": self.run_id}
        return {"status": "fail", "run_id": self.run_id, "error": self.error}


class Reporter(Protocol):
    def trial_started(self, number: int, run_id: str, params: dict[str, Any]) -> None: ...
    def epoch_ended(self, number: int, step: int, metrics: dict[str, float]) -> None: ...
    def trial_ended(self, result: TrialResult) -> None: ...


@dataclass
class TrialSetup:
    """Everything that is the same for every trial of a study."""

    tracker: Tracker
    experiment_id: str
    study_run_id: str
    recipe: Recipe
    data: tuple[Any, ...]
    objective: Objective
    reporter: Reporter
    seed: int | None = None
    log_model: bool = True
    quiet_fit: bool = False
    max_epochs: int | None = None
    test: tuple[Any, Any] | None = field(init=False)

    def __post_init__(self) -> None:
        self.test = self.recipe.test_data(self.data)


class TrialFailure(Exception):
    """The trial's outcome cannot be used (bad return value, NaN, missing metric)."""


def run_trial(setup: TrialSetup, number: int, params: dict[str, Any], raw: dict[str, Any]) -> TrialResult:
    """Run ``model(*data)`` with ``params`` as one MLflow child run of the study."""
    tracker = setup.tracker
    run_id = tracker.start_run(setup.experiment_id, f"trial-{number}", "trial", setup.study_run_id,
                               tags={"tuning.trial": str(number),
                                     "tuning.hyperopt_vals": json.dumps(raw, default=float)})
    tracker.log(run_id, params=params, tags=params)
    setup.reporter.trial_started(number, run_id, params)
    sender = tracker.sender(run_id)

    def sink(step: int, metrics: dict[str, float]) -> None:
        sender.send(metrics, step)
        setup.reporter.epoch_ended(number, step, metrics)

    log = EpochLog(sink, quiet=setup.quiet_fit, max_epochs=setup.max_epochs)
    started = time.perf_counter()
    try:
        if setup.seed is not None:
            keras.utils.set_random_seed((setup.seed + number) % 2**32)
        with recording(log), assigned(params), fluent_run(run_id):
            returned = setup.recipe.model(*setup.data)
        model, loss, metrics = _outcome(returned, log, setup)
        sender.close()
        tracker.log(run_id, metrics={**metrics, LOSS_METRIC: loss}, step=len(log.epochs))
        if setup.log_model and model is not None:
            tracker.log_keras_model(setup.experiment_id, run_id, model, _sample(setup.test), params)
        tracker.end_run(run_id, "FINISHED")
        result = TrialResult(number, run_id, TrialStatus.OK, params, loss,
                             seconds=time.perf_counter() - started)
    except KeyboardInterrupt:
        _close_quietly(sender)
        tracker.end_run(run_id, "KILLED")
        raise
    except TrackingError:
        _close_quietly(sender)
        raise
    except Exception as error:  # noqa: BLE001 - the user's code failed: record it, search on
        _close_quietly(sender)
        message = f"{type(error).__name__}: {error}"
        tracker.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
        tracker.log(run_id, tags={"tuning.error": message})
        tracker.end_run(run_id, "FAILED")
        result = TrialResult(number, run_id, TrialStatus.FAILED, params, error=message,
                             seconds=time.perf_counter() - started)
    finally:
        # Free the graph and weights of this trial so memory stays flat over many trials
        # (clear_session also runs the garbage collector). JAX keeps every compiled
        # function until asked; TensorFlow keeps its traced graphs regardless (see worker.py).
        keras.backend.clear_session()
        if keras.backend.backend() == "jax":
            import jax

            jax.clear_caches()
    setup.reporter.trial_ended(result)
    return result


def _outcome(returned: Any, log: EpochLog, setup: TrialSetup) -> tuple[Any, float, dict[str, float]]:
    """The model to log, the loss for hyperopt and extra metrics, from what model() returned."""
    model, given_loss = _unpack(returned)
    metrics: dict[str, float] = {}
    if given_loss is not None:
        loss = float(given_loss)
    else:
        measured: dict[str, float] = {}
        if model is not None and setup.test is not None and not setup.objective.metric.startswith("val_"):
            x, y = setup.test
            measured = {k: float(v) for k, v in
                        model.evaluate(x, y, verbose=0, return_dict=True).items()}
            metrics.update({f"test_{k}": v for k, v in measured.items()})
        value = setup.objective.find(measured, log.last)
        if value is None:
            available = sorted({*measured, *log.last}) or ["none: model() trained nothing"]
            raise TrialFailure(f"objective {setup.objective.metric!r} was not measured; available "
                               f"metrics: {', '.join(available)} (choose one with --objective)")
        metrics[f"objective_{setup.objective.metric}"] = value
        loss = setup.objective.loss(value)
    if math.isnan(loss):
        raise TrialFailure("the objective is NaN (training diverged?)")
    return model, loss, metrics


def _unpack(returned: Any) -> tuple[Any, Any]:
    """(model, loss or None) from a Keras model, (history, model) or a hyperopt dict."""
    if isinstance(returned, keras.Model):
        return returned, None
    if isinstance(returned, dict):
        if returned.get("status", "ok") != "ok":
            raise TrialFailure(f"model() returned status {returned.get('status')!r}"
                               + (f": {returned['error']}" if "error" in returned else ""))
        model = returned.get("model")
        return (model if isinstance(model, keras.Model) else None), returned.get("loss")
    if isinstance(returned, tuple | list) and len(returned) == 2:
        models = [r for r in returned if isinstance(r, keras.Model)]
        if models:
            return models[0], None
    raise TrialFailure(
        "model() must return a Keras model, (history, model), or a hyperopt dict "
        f"{{'loss': …, 'status': 'ok'}}; it returned {type(returned).__name__}")


def _sample(test: tuple[Any, Any] | None) -> Any:
    if test is None:
        return None
    try:
        return test[0][:5]
    except TypeError:
        return None


def _close_quietly(sender: Any) -> None:
    try:
        sender.close()
    except TrackingError:
        pass
