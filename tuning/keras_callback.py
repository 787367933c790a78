"""Per-epoch metrics of every ``fit`` in a trial, without the user adding a callback.

While a trial runs, ``keras.Model.fit`` is wrapped once, in one place: the wrapper adds
an :class:`EpochCallback` for the trial active in the calling thread (a ContextVar) and
passes every argument on by name. The original ``fit`` is restored when the last
running trial ends. Inside :func:`capturing`, ``fit`` trains nothing: it hands the
compiled model and its arguments back by raising :class:`FitCaptured` (population based
training drives the training itself).
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tuning.quiet import tensorflow_start_up

with tensorflow_start_up():
    import keras

EpochSink = Callable[[int, dict[str, float]], None]


class EpochCallback(keras.callbacks.Callback):
    """Hands each epoch's logs to the trial's :class:`EpochLog`."""

    def __init__(self, log: EpochLog):
        super().__init__()
        self._log = log

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._log.planned_epochs = self.params.get("epochs") or 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._log.add(logs or {})


class EpochLog:
    """The epochs of one trial, numbered across all its ``fit`` calls."""

    def __init__(self, sink: EpochSink, quiet: bool = False, max_epochs: int | None = None):
        self.sink = sink
        self.quiet = quiet
        self.max_epochs = max_epochs
        self.epochs: list[dict[str, float]] = []
        self.planned_epochs = 0  # the ``epochs`` of the fit running now
        self.last_model: keras.Model | None = None  # the model fitted last, for a model() that returns none

    def add(self, logs: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in logs.items() if _is_number(v)}
        step = len(self.epochs)
        self.epochs.append(values)
        self.sink(step, values)

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


_ACTIVE: contextvars.ContextVar[EpochLog | None] = contextvars.ContextVar("tuning_epochs", default=None)
_CAPTURING: contextvars.ContextVar[bool] = contextvars.ContextVar("tuning_capturing", default=False)
_lock = threading.Lock()
_users = 0
_original_fit: Any = None
_own_fit: Any = None  # keras.Model's own "fit" attribute, if it had one, to put back


class FitCaptured(BaseException):  # noqa: N818 - a signal, not an error
    """Raised by ``fit`` inside :func:`capturing`: the compiled model and fit's arguments.

    A BaseException, so that a recipe's own ``except Exception`` around ``fit`` lets it pass.
    """

    def __init__(self, model: keras.Model, arguments: dict[str, Any]):
        super().__init__("fit captured")
        self.model = model
        self.arguments = arguments


def _fit(self: keras.Model, *args: Any, **kwargs: Any) -> Any:
    bound = inspect.signature(_original_fit).bind(self, *args, **kwargs)
    if _CAPTURING.get():
        raise FitCaptured(self, {k: v for k, v in bound.arguments.items() if k != "self"})
    log = _ACTIVE.get()
    if log is None:
        return _original_fit(self, *args, **kwargs)
    log.last_model = self
    arguments = bound.arguments
    arguments["callbacks"] = [*(arguments.get("callbacks") or []), EpochCallback(log)]
    if log.quiet:
        arguments["verbose"] = 0
    if log.max_epochs is not None:  # a cap for quick runs: every fit trains at most N epochs
        first = arguments.get("initial_epoch", 0)
        arguments["epochs"] = min(arguments.get("epochs", 1), first + log.max_epochs)
    positional, named = _by_name(bound)
    return _original_fit(*positional, **named)


def _by_name(bound: inspect.BoundArguments) -> tuple[list[Any], dict[str, Any]]:
    """fit's arguments, each by name where the signature allows: a wrapper around fit
    (mlflow.keras.autolog's) that reads callbacks from ``args[5]`` and also sets
    ``kwargs["callbacks"]`` would pass them twice if they came by position."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        parameter = bound.signature.parameters.get(name)
        kind = parameter.kind if parameter is not None else inspect.Parameter.KEYWORD_ONLY
        if kind is inspect.Parameter.POSITIONAL_ONLY or name == "self":
            args.append(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return args, kwargs


@contextmanager
def recording(log: EpochLog) -> Iterator[EpochLog]:
    """Send the epochs of every ``fit`` in this block (this thread only) to ``log``."""
    with _wrapped_fit():
        token = _ACTIVE.set(log)
        try:
            yield log
        finally:
            _ACTIVE.reset(token)


@contextmanager
def capturing() -> Iterator[None]:
    """Make ``fit`` in this block (this thread only) raise :class:`FitCaptured` instead of training."""
    with _wrapped_fit():
        token = _CAPTURING.set(True)
        try:
            yield
        finally:
            _CAPTURING.reset(token)


@contextmanager
def _wrapped_fit() -> Iterator[None]:
    """``keras.Model.fit`` is :func:`_fit` while any block in any thread needs it."""
    global _users, _original_fit, _own_fit
    with _lock:
        if _users == 0:
            _own_fit = keras.Model.__dict__.get("fit")
            _original_fit = keras.Model.fit
            keras.Model.fit = _fit
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                if _own_fit is None:
                    del keras.Model.fit  # fit is inherited from the backend's trainer class
                else:
                    keras.Model.fit = _own_fit
                _original_fit = _own_fit = None
