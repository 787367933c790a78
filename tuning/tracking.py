"""Everything that talks to MLflow.

Run ids are passed explicitly; nothing here touches MLflow's fluent active-run stack,
so trials in parallel threads or processes cannot mix up their runs. Per-epoch metrics
go through :class:`MetricSender`, a background thread, so that ``fit`` never waits on
the network.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import queue
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tuning.errors import TrackingError

_log = logging.getLogger("tuning")
DEFAULT_PATIENCE = 600.0  # seconds a tracking server may be away before the study stops
SEND_INTERVAL = 1.0  # seconds over which per-epoch metrics are gathered into one request
KIND_TAG = "tuning.kind"  # "study" or "trial": how queries tell our runs apart
STRATEGY_TAG = "tuning.strategy"  # "pbt" on population based training studies, else absent
LOSS_METRIC = "hyperopt_loss"  # the value handed to hyperopt, minimised
_MAX_VALUE_LENGTH = 6000  # MLflow's limit for a param/tag value is 6000 characters


def resolve_uri(tracking_uri: str | None) -> str:
    """The flag, else ``MLFLOW_TRACKING_URI``, else MLflow's default in the working folder."""
    if tracking_uri:
        return tracking_uri
    mlflow.set_tracking_uri(None)  # drop any URI set earlier in this process
    return mlflow.get_tracking_uri()


def ui_command(uri: str) -> str:
    """How a user opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def format_value(value: Any) -> str:
    """A hyperparameter value as users wrote it (classes and functions by name)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float) and value.is_integer():
        text = repr(value)
    elif hasattr(value, "__qualname__"):
        text = value.__qualname__
    else:
        text = repr(value)
    return text[:_MAX_VALUE_LENGTH]


T = TypeVar("T")


def _transient(error: BaseException) -> bool:
    """Whether an error means "the store is away for now" rather than "the request is wrong"."""
    if isinstance(error, MlflowException):
        return error.error_code in {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                                    "INTERNAL_ERROR"} or "failed with" in error.message
    return isinstance(error, OSError)


class Patience:
    """Retries writes while the tracking store is away, with backoff, for a bounded time.

    The time counts from the first failure of a call; past it, :class:`TrackingError`
    stops the study (every trial delivered so far is on the server; ``--resume`` goes on).
    """

    def __init__(self, uri: str, seconds: float):
        self.uri = uri
        self.seconds = seconds

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline, delay = None, 0.5
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - sorted below: transient or not
                if not _transient(error):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.seconds
                    _log.warning("tracking store %s unreachable (%s); retrying for up to %.0f s",
                                 self.uri, error, self.seconds)
                if now >= deadline:
                    raise TrackingError(
                        f"the tracking store {self.uri} was unreachable for {self.seconds:.0f} s "
                        f"({error}); trials delivered before are kept: continue with --resume "
                        "once it is back") from error
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 10.0)


class Tracker:
    """A tracking store: reachability check, experiments, runs, batches, models.

    Writes go through :class:`Patience`: a server that goes away for less than
    ``patience`` seconds costs waiting, not data.
    """

    def __init__(self, tracking_uri: str | None = None, patience: float = DEFAULT_PATIENCE):
        self.uri = resolve_uri(tracking_uri)
        scheme = urllib.parse.urlparse(self.uri).scheme.split("+")[0]
        if scheme not in ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql",
                          "databricks", ""):
            raise TrackingError(f"unsupported tracking URI {self.uri!r}: use http://host:port, "
                                "sqlite:///path.db or a database URI")
        if self.uri.startswith(("http://", "https://")):
            # MLflow's own retries back off for minutes; ours are bounded by --patience.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        mlflow.set_tracking_uri(self.uri)  # MLflow's model logging reads the global URI
        self.client = MlflowClient(self.uri)
        self.patience = Patience(self.uri, patience)

    def check(self) -> None:
        """Fail fast, with the fix, when the store cannot be reached."""
        parsed = urllib.parse.urlparse(self.uri)
        if parsed.scheme in ("http", "https"):
            try:
                with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=10):
                    pass
            except urllib.error.HTTPError:
                pass  # it answers; whether it lets us in is asked below, with credentials
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise TrackingError(
                    f"cannot reach the tracking server at {self.uri} ({reason}); start one with "
                    "`mlflow server --host 127.0.0.1 --port 5000`, or leave out --tracking-uri "
                    "to use the local store in this folder") from None
        try:
            self.client.search_experiments(max_results=1)
        except MlflowException as error:
            if error.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or " 401" in error.message:
                raise TrackingError(
                    f"the tracking server at {self.uri} refused the credentials: set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                    "MLFLOW_TRACKING_TOKEN) to an account it knows") from None
            raise TrackingError(f"the tracking store {self.uri} refused a request: "
                                f"{error.message}") from None

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing; a deleted one is an error."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment {name!r} was deleted; restore it with `mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}` or choose another --experiment")
        return experiment.experiment_id

    def start_run(self, experiment_id: str, name: str, kind: str,
                  parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {KIND_TAG: kind, **(tags or {})}
        if parent_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        run = self.patience.call(self.client.create_run, experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def log(self, run_id: str, *, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
            step: int = 0) -> None:
        """One synchronous batch of params, tags and metrics."""
        now = int(time.time() * 1000)
        self.patience.call(
            self.client.log_batch,
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, format_value(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, format_value(v)) for k, v in (tags or {}).items()],
        )

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.patience.call(self.client.log_text, run_id, text, path)

    def log_json(self, run_id: str, data: Any, path: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=2, default=str), path)

    def end_run(self, run_id: str, status: str) -> None:
        self.patience.call(self.client.set_terminated, run_id, status=status)

    def log_keras_model(self, experiment_id: str, run_id: str, model: Any, x_sample: Any | None,
                        params: Mapping[str, Any]) -> None:
        """Log ``model`` as the run's logged model ``model``: signature, pinned requirements.

        What ``mlflow.keras.log_model`` does, without what costs a trial seconds: inferring
        requirements (it imports the model in a subprocess, ~10 s), re-reading every metric
        of the run to attach it to the model (a round trip per metric), and a prediction
        to learn the output shape (the model knows it). The logged model is created in the
        run's experiment, or ``runs:/<id>/model`` would not resolve.
        """
        import mlflow.keras
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        logged = self.patience.call(
            self.client.create_logged_model, experiment_id, name="model", source_run_id=run_id,
            params={k: format_value(v) for k, v in params.items()})
        self.patience.call(self.client.log_outputs, run_id, [LoggedModelOutput(logged.model_id, 0)])
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, "model")
            description = Model(artifact_path=logged.artifact_location, run_id=run_id,
                                model_uuid=logged.model_id, model_id=logged.model_id)
            mlflow.keras.save_model(model, local, mlflow_model=description,
                                    signature=_signature(model, x_sample),
                                    pip_requirements=keras_requirements())
            self.patience.call(self.client.log_model_artifacts, logged.model_id, local)
        self.patience.call(self.client.finalize_logged_model, logged.model_id, LoggedModelStatus.READY)

    def sender(self, run_id: str) -> MetricSender:
        return MetricSender(self, run_id)


def _signature(model: Any, x_sample: Any | None) -> Any:
    """The model's signature from a few inputs and its declared output shape."""
    from mlflow.models import infer_signature

    if x_sample is None:
        return None
    try:
        outputs = np.zeros((len(x_sample), *model.output_shape[1:]), dtype="float32")
    except (AttributeError, TypeError, ValueError):  # several outputs, or not built
        try:
            outputs = model.predict(x_sample, verbose=0)
        except Exception:  # noqa: BLE001 - a model we cannot sample is logged without one
            return None
    try:
        return infer_signature(x_sample, outputs)
    except Exception:  # noqa: BLE001 - same
        return None


@cache
def keras_requirements() -> list[str]:
    """Pinned pip requirements for the installed Keras and its backend."""
    import keras

    backend = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
               "torch": ("torch",)}.get(keras.backend.backend(), ())
    requirements = [f"keras=={keras.__version__}"]
    for dist in backend:
        try:
            requirements.append(f"{dist}=={importlib.metadata.version(dist)}")
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return requirements


@contextmanager
def fluent_run(run_id: str) -> Iterator[None]:
    """Let MLflow calls in the user's own code (tutorial style) log into the trial's run.

    ``mlflow.start_run()`` and a bare ``mlflow.log_metric`` resume the run named by
    ``MLFLOW_RUN_ID``; a run they leave open on MLflow's stack is closed on the way out
    (the trial sets its true status right after).
    """
    previous = os.environ.get("MLFLOW_RUN_ID")
    os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        yield
    finally:
        while (active := mlflow.active_run()) is not None and active.info.run_id == run_id:
            mlflow.end_run()
        if previous is None:
            os.environ.pop("MLFLOW_RUN_ID", None)
        else:
            os.environ["MLFLOW_RUN_ID"] = previous


class MetricSender:
    """Sends one run's metrics from a background thread, in batches.

    ``send`` only puts the values on a queue (microseconds), so training never waits
    on the tracking server, even while it is away; ``close`` delivers what is left.
    """

    def __init__(self, tracker: Tracker, run_id: str):
        self._tracker = tracker
        self._run_id = run_id
        self._queue: queue.Queue[list[Metric] | None] = queue.Queue()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._work, name=f"metrics-{run_id[:8]}", daemon=True)
        self._thread.start()

    def send(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._queue.put([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if isinstance(self._error, TrackingError):
            raise self._error
        if self._error is not None:
            raise TrackingError(f"could not log metrics of run {self._run_id}: {self._error}")

    def _work(self) -> None:
        done = False
        while not done:
            batch = self._queue.get()
            if batch is None:
                break
            # Gather what arrives within SEND_INTERVAL: short epochs make fewer, larger
            # requests (each costs the server CPU that training on the same host would
            # otherwise have), and a metric is still on the server a second after its epoch.
            deadline = time.monotonic() + SEND_INTERVAL
            while (left := deadline - time.monotonic()) > 0:
                try:
                    more = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                batch.extend(more)
            try:
                for i in range(0, len(batch), 1000):  # MLflow's limit per batch
                    self._tracker.patience.call(self._tracker.client.log_batch, self._run_id,
                                                metrics=batch[i:i + 1000])
            except Exception as error:  # noqa: BLE001 - reported by close() in the trial's thread
                self._error = error

