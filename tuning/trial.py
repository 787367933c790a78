"""One trial: a child run, the user's model function, its metrics, model and loss.

The run's status tells the truth: FINISHED, FAILED (the user's code raised, or the
objective is NaN; the traceback is attached as ``error.txt``) or KILLED (interrupted, or
pruned: then tagged ``tuning.pruned``). A failed trial is reported to hyperopt as
``status: fail`` and the search goes on; a pruned one as its last measured loss.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import json
import logging
import math
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tuning.quiet import tensorflow_start_up

with tensorflow_start_up():
    import keras
import numpy as np
from hyperopt import pyll

from tuning.errors import RecipeError, StoreError, TrackingError
from tuning.fluent import fluent_run
from tuning.keras_callback import EpochLog, recording
from tuning.objective import Objective
from tuning.pruners import Curve, Pruning
from tuning.recipe import Recipe
from tuning.sender import MetricSender
from tuning.template import assigned
from tuning.tracking import (
    INTERRUPTED_TAG,
    LOSS_METRIC,
    MODEL_ERROR_TAG,
    OWN_LOSS_TAG,
    RETRY_TAG,
    Tracker,
)

__all__ = ["TrialOptions", "TrialResult", "TrialStatus", "TrialPruned"]  # the rest is this package's own

_log = logging.getLogger("tuning")


class TrialStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    KILLED = "killed"
    PRUNED = "pruned"  # stopped between epochs by the study's pruner


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
    curve: Curve = ()  # the objective after each epoch, as a loss (what pruning compares)
    model_logged: bool = False  # whether ``runs:/<run_id>/model`` loads
    own_loss: bool = False  # model() returned its loss itself (a hyperas dict), not the objective
    retry_of: str | None = None  # the run of the interrupted trial that this one runs again
    # In the process that ran the trial only (see portable()): the exception that failed
    # it, its frames' locals cleared, and what else model()'s result dict held.
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_hyperopt(self) -> dict[str, Any]:
        if self.status in (TrialStatus.OK, TrialStatus.PRUNED):
            return {**self.extra, "status": "ok", "loss": self.loss, "run_id": self.run_id}
        return {"status": "fail", "run_id": self.run_id, "error": self.error}

    def portable(self) -> TrialResult:
        """This result without what may not survive a trip to another process."""
        return dataclasses.replace(self, exception=None, extra={})


class Reporter(Protocol):
    def trial_started(self, number: int, run_id: str, params: dict[str, Any]) -> None: ...
    def epoch_ended(self, number: int, step: int, metrics: dict[str, float]) -> None: ...
    def trial_ended(self, result: TrialResult) -> None: ...


@dataclass(frozen=True)
class TrialOptions:
    """How every trial of a study runs. One object: the study hands it to each trial, to a
    worker process and to a Spark task (which turns ``quiet_fit`` on: its logs are no terminal)."""

    objective: Objective = Objective()
    seed: int | None = None  # trial N seeds Keras with seed + N
    log_model: bool = True
    quiet_fit: bool = False  # Keras' own per-epoch output off (a progress bar shows instead)
    max_epochs: int | None = None  # every fit trains at most this many epochs (quick runs)


@dataclass
class TrialSetup:
    """Everything that is the same for every trial of a study."""

    tracker: Tracker
    experiment_id: str
    study_run_id: str
    recipe: Recipe
    data: tuple[Any, ...]
    options: TrialOptions
    reporter: Reporter
    retries: tuple[tuple[int, str], ...] = ()  # (trial number, run id of the interrupted trial it reruns)
    test: tuple[Any, Any] | None = field(init=False)

    def __post_init__(self) -> None:
        self.test = self.recipe.test_data(self.data)

    def retry_of(self, number: int) -> str | None:
        """The run of the interrupted trial that trial ``number`` runs again, if it does."""
        return dict(self.retries).get(number)


def hyperopt_point(expr: Any, memo: dict[Any, Any], names: Iterable[str]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's real values (in ``names`` order) and hyperopt's raw ones, from the memo
    hyperopt hands an objective marked ``fmin_pass_expr_memo_ctrl``."""
    raw = {node.arg["label"].obj: _plain(value) for node, value in memo.items()
           if value is not pyll.base.GarbageCollected}
    values = pyll.rec_eval(expr, memo=memo)
    return {name: _plain(values[name]) for name in names}, raw


def _plain(value: Any) -> Any:
    """numpy scalars to Python values, so tags read ``64`` and Keras gets an ``int``."""
    return value.item() if isinstance(value, np.generic) else value


class TrialFailure(Exception):
    """The trial's outcome cannot be used (bad return value, NaN, missing metric)."""


class TrialPruned(Exception):  # noqa: N818 - named as Optuna names it
    """Raised between epochs, through ``fit`` and the user's code, to stop a pruned trial."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch
        self.loss = loss


def run_trial(setup: TrialSetup, number: int, params: dict[str, Any], raw: dict[str, Any],
              pruning: Pruning | None = None) -> TrialResult:
    """Run ``model(*data)`` with ``params`` as one MLflow child run of the study; ``pruning``
    (the study's pruner and the curves known as the trial starts) may stop it between epochs."""
    tracker, options = setup.tracker, setup.options
    retry_of = setup.retry_of(number)
    run_id = _start(setup, number, params, raw, retry_of)
    sender = tracker.sender(run_id)
    curve: list[float] = []

    def sink(step: int, metrics: dict[str, float]) -> None:
        sender.send(metrics, step)
        setup.reporter.epoch_ended(number, step, metrics)
        loss = options.objective.epoch_loss(metrics)
        if loss is not None:
            curve.append(loss)
            if pruning and pruning.should_prune(number, tuple(curve), log.planned_epochs):
                raise TrialPruned(step, loss)

    log = EpochLog(sink, quiet=options.quiet_fit, max_epochs=options.max_epochs)
    started = time.perf_counter()
    try:
        if options.seed is not None:
            keras.utils.set_random_seed((options.seed + number) % 2**32)
        with recording(log), assigned(params), fluent_run(run_id, tracker.uri) as user:
            returned = setup.recipe.model(*setup.data)
        model, loss, metrics, extra = _outcome(returned, log, setup)
        own = isinstance(returned, dict) and returned.get("loss") is not None
        logged = end_finished(setup, run_id, sender, model, params, {**metrics, LOSS_METRIC: loss},
                              len(log.epochs), user.model_id, tags={OWN_LOSS_TAG: "true"} if own else None)
        result = TrialResult(number, run_id, TrialStatus.OK, params, loss,
                             seconds=time.perf_counter() - started, curve=tuple(curve),
                             model_logged=logged, own_loss=own, retry_of=retry_of, extra=extra)
    except TrialPruned as pruned:
        _end_pruned(tracker, run_id, sender, pruned)
        result = TrialResult(number, run_id, TrialStatus.PRUNED, params, pruned.loss,
                             seconds=time.perf_counter() - started, curve=tuple(curve), retry_of=retry_of)
    except KeyboardInterrupt:
        _close_quietly(sender)
        tracker.log(run_id, tags={INTERRUPTED_TAG: "true"})  # --resume runs its configuration again
        tracker.end_run(run_id, "KILLED")
        raise
    except TrackingError:
        _close_quietly(sender)
        raise
    except RecipeError as error:  # every trial would fail the same way: stop the study now
        end_failed(tracker, run_id, sender, error)
        raise
    except Exception as error:  # noqa: BLE001 - the user's code failed: record it, search on
        message = end_failed(tracker, run_id, sender, error)
        result = TrialResult(number, run_id, TrialStatus.FAILED, params, error=message,
                             seconds=time.perf_counter() - started, retry_of=retry_of,
                             exception=_detached(error))
    finally:
        free_models()
    setup.reporter.trial_ended(result)
    return result


def _start(setup: TrialSetup, number: int, params: dict[str, Any], raw: dict[str, Any],
           retried: str | None) -> str:
    """The trial's child run, with its values as params and tags (hyperopt's own in a tag)."""
    run_id = setup.tracker.start_run(setup.experiment_id, f"trial-{number}", "trial", setup.study_run_id,
                                     tags={"tuning.trial": str(number),
                                           "tuning.hyperopt_vals": json.dumps(raw, default=float),
                                           **({RETRY_TAG: retried} if retried else {})})
    setup.tracker.log(run_id, params=params, tags=params)
    setup.reporter.trial_started(number, run_id, params)
    return run_id


def _end_pruned(tracker: Tracker, run_id: str, sender: MetricSender, pruned: TrialPruned) -> None:
    """The loss where the pruner stopped it, tagged pruned; the run ends KILLED."""
    sender.close()
    tracker.log(run_id, metrics={LOSS_METRIC: pruned.loss}, step=pruned.epoch + 1,
                tags={"tuning.pruned": "true", "tuning.pruned_epoch": pruned.epoch})
    tracker.end_run(run_id, "KILLED")


def end_finished(setup: TrialSetup, run_id: str, sender: MetricSender, model: Any, params: dict[str, Any],
                 metrics: dict[str, float], steps: int, user_model: str | None = None,
                 tags: dict[str, str] | None = None) -> bool:
    """Deliver a trial's last metrics (loss included) and its model; end its run FINISHED.

    ``user_model`` is the id of a model the user's own code logged into the run; if it is
    named ``model`` it is the trial's model and ours is not logged beside it. Returns
    whether ``runs:/<run_id>/model`` loads.
    """
    sender.close()
    tracker = setup.tracker
    tracker.log(run_id, metrics=metrics, step=steps, tags=tags)
    logged = user_model is not None and tracker.logged_model_name(user_model) == "model"
    if setup.options.log_model and model is not None and not logged:
        try:
            tracker.log_keras_model(setup.experiment_id, run_id, model, _sample(setup.test), params)
            logged = True
        except StoreError as error:  # the server cannot keep it (a full disk): the training still counts
            _log.warning("the model of run %s was not stored: %s", run_id, error)
            tracker.log(run_id, tags={MODEL_ERROR_TAG: str(error)})
    tracker.end_run(run_id, "FINISHED")
    return logged


def _detached(error: Exception) -> Exception:
    """``error`` without this module's frame, and with its frames' locals let go: it is
    kept with the trial's result (``optim`` raises it as hyperas would), not the models
    and data its frames held."""
    if error.__traceback__ is not None:
        error.__traceback__ = error.__traceback__.tb_next
        traceback.clear_frames(error.__traceback__)
    return error


def end_failed(tracker: Tracker, run_id: str, sender: MetricSender, error: BaseException) -> str:
    """Attach the traceback (``error.txt``) and ``tuning.error``; end the run FAILED; the message."""
    _close_quietly(sender)
    message = f"{type(error).__name__}: {error}"
    tracker.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
    tracker.log(run_id, tags={"tuning.error": message})
    tracker.end_run(run_id, "FAILED")
    return message


def free_models() -> None:
    """Free the graphs and weights of finished models so memory stays flat over many trials.

    clear_session also runs the garbage collector. JAX keeps every compiled function
    until asked; TensorFlow keeps its traced graphs regardless (see worker.py).
    """
    keras.backend.clear_session()
    if keras.backend.backend() == "jax":
        import jax

        jax.clear_caches()


def settle() -> None:
    """Move everything alive now (TensorFlow, MLflow, the recipe's data) out of the garbage
    collector's sight. It lives as long as the process runs trials; without this, the
    collection after each trial (``clear_session`` runs one) takes a third of a second
    instead of milliseconds."""
    gc.collect()
    gc.freeze()


def _outcome(returned: Any, log: EpochLog, setup: TrialSetup
             ) -> tuple[Any, float, dict[str, float], dict[str, Any]]:
    """The model to log, the loss for hyperopt, extra metrics, and the other entries of a
    result dict (hyperopt keeps them in ``trials.results``), from what model() returned.

    A model() that returns no model (hyperas' tutorial leaves it out of its dict, to save
    memory) has its last fitted model logged.
    """
    model, given_loss = _unpack(returned)
    model = model if model is not None else log.last_model
    extra = ({k: v for k, v in returned.items() if k not in ("loss", "status", "model")}
             if isinstance(returned, dict) else {})
    if given_loss is None:
        return model, *measure(model, log.last, setup.options.objective, setup.test), extra
    return model, _finite(float(given_loss)), {}, extra


def measure(model: Any, last_epoch: dict[str, float], objective: Objective,
            test: tuple[Any, Any] | None) -> tuple[float, dict[str, float]]:
    """The loss of a trained model and the metrics behind it (``test_*``, ``objective_*``).

    A ``val_*`` objective is read from ``last_epoch``; others from ``model.evaluate`` on
    ``test`` (falling back to ``last_epoch``).
    """
    metrics: dict[str, float] = {}
    measured: dict[str, float] = {}
    if model is not None and test is not None and not objective.metric.startswith("val_"):
        x, y = test
        measured = {k: float(v) for k, v in model.evaluate(x, y, verbose=0, return_dict=True).items()}
        metrics.update({f"test_{k}": v for k, v in measured.items()})
    value = objective.find(measured, last_epoch)
    if value is None:
        available = sorted({*measured, *last_epoch}) or ["none: model() trained nothing"]
        raise TrialFailure(f"objective {objective.metric!r} was not measured; available "
                           f"metrics: {', '.join(available)} (choose one with --objective)")
    metrics[f"objective_{objective.metric}"] = value
    return _finite(objective.loss(value)), metrics


def _finite(loss: float) -> float:
    if math.isnan(loss):
        raise TrialFailure("the objective is NaN (training diverged?)")
    return loss


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
    if returned is None:
        raise RecipeError("model() returned None: end it with `return model` (a Keras model), "
                          "`return history, model`, or `return {'loss': …, 'status': 'ok'}`")
    raise TrialFailure(
        "model() must return a Keras model, (history, model), or a hyperopt dict "
        f"{{'loss': …, 'status': 'ok'}}; it returned {type(returned).__name__}")


def _sample(test: tuple[Any, Any] | None) -> Any:
    """A few test inputs for the model's signature: an array, or a list or dict of them."""
    if test is None:
        return None
    x = test[0]
    try:
        if isinstance(x, dict):
            return {k: v[:5] for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [v[:5] for v in x]
        return x[:5]
    except TypeError:
        return None


def _close_quietly(sender: Any) -> None:
    try:
        sender.close()
    except TrackingError:
        pass
