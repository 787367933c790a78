"""Everything that talks to MLflow.

Run ids are passed explicitly; nothing here touches MLflow's fluent active-run stack,
so trials in parallel threads or processes cannot mix up their runs. Per-epoch metrics
go through :class:`tuning.sender.MetricSender`, a background thread, so that ``fit`` never
waits on the network.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment, Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tuning.errors import TrackingError
from tuning.fluent import default_uri, quiet_downloads, resolve_uri, user_experiment, using_uri
from tuning.patience import DEFAULT_PATIENCE, Patience
from tuning.sender import MetricSender
from tuning.signature import keras_requirements, signature

KIND_TAG = "tuning.kind"  # "study" or "trial": how queries tell our runs apart
STRATEGY_TAG = "tuning.strategy"  # "pbt" on population based training studies, else absent
LOSS_METRIC = "hyperopt_loss"  # the value handed to hyperopt, minimised
OWN_LOSS_TAG = "tuning.own_loss"  # "true" when model() returned the loss itself (not the objective)
MODEL_ERROR_TAG = "tuning.model_error"  # why a finished trial has no model (the server refused it)
CREATE_TAG = "tuning.create_id"  # chosen by the client, so a run made by a retried request is found
INTERRUPTED_TAG = "tuning.interrupted"  # "true" on a trial whose study was stopped (or died) under it
RETRY_TAG = "tuning.retry_of"  # on a trial that reruns an interrupted one: that one's run id
MODEL_DELETED_TAG = "tuning.model_deleted"  # why a finished trial's model is gone (--keep-models best:N)
SOURCE_FUNCTION_TAG = "tuning.source_function"  # the study's model function, in the file tagged tuning.recipe
_PAGE = 1000  # runs per search request
_MAX_VALUE_LENGTH = 6000  # MLflow's limit for a param/tag value is 6000 characters
T = TypeVar("T")


def ui_command(uri: str) -> str:
    """How a user opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return "tuning ui" if uri == default_uri() else f"tuning ui --tracking-uri {uri}"


_log = logging.getLogger("tuning")
_UNSIGNED = "You are saving a Keras model without specifying model signature."  # MLflow's, per save


@contextmanager
def _without_warning(logger: str, message: str) -> Iterator[None]:
    """``logger`` does not log ``message`` in this block."""
    def other(record: logging.LogRecord) -> bool:
        return record.getMessage() != message

    logging.getLogger(logger).addFilter(other)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(other)


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


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """Open a store one process at a time: MLflow creates a new sqlite store's tables when a
    client first opens it, and of two processes doing so at once, one fails."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = os.path.dirname(os.path.abspath(urllib.parse.unquote(uri.removeprefix("sqlite:///"))))
    os.makedirs(folder, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)  # a lock on the folder leaves no file behind
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _check_alive(experiment: Any) -> None:
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {experiment.name!r} was deleted; restore it with `mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}` or choose another --experiment")


def _check_uri(uri: str) -> None:
    """A URI MLflow 3 can track in, or the one to write instead."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if uri in ("databricks", "databricks-uc") or scheme in ("databricks", "databricks-uc"):
        return
    if scheme in ("", "file") and not MLFLOW_ALLOW_FILE_STORE.get():
        # MLflow 3 refuses to write a folder store ("maintenance mode"), which is also its
        # default where ./mlruns holds runs.
        path = os.path.abspath(parsed.path if scheme else uri)
        folder = os.path.dirname(path) if os.path.basename(path) == "mlruns" else path
        database = path if path.endswith((".db", ".sqlite")) else os.path.join(folder, "mlflow.db")
        raise TrackingError(f"the tracking URI {uri!r} is a folder store: MLflow 3 tracks in a database "
                            f"or a server; use sqlite:///{database} (`mlflow migrate-filestore` moves "
                            "a folder's runs into it), or set MLFLOW_ALLOW_FILE_STORE=true")
    if scheme == "sqlite" and parsed.netloc:
        raise TrackingError(f"the tracking URI {uri!r} has two slashes: write sqlite:///relative/path.db "
                            "or sqlite:////absolute/path.db")
    if scheme not in ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "", "file"):
        raise TrackingError(f"unsupported tracking URI {uri!r}: use http://host:port, "
                            "sqlite:///path.db or a database URI")


class Tracker:
    """A tracking store: reachability check, experiments, runs, batches, models.

    Writes go through :class:`Patience`: a server that goes away for less than
    ``patience`` seconds costs waiting, not data.
    """

    def __init__(self, tracking_uri: str | None = None, patience: float = DEFAULT_PATIENCE):
        self.uri = resolve_uri(tracking_uri)
        _check_uri(self.uri)
        if self.uri.startswith(("http://", "https://")):
            # MLflow's own retries back off for minutes, and repeat a request whose reply was
            # lost after the server acted; ours are bounded by --patience and made safe to repeat.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        with _creating(self.uri):
            self.client = MlflowClient(self.uri)
        self.patience = Patience(self.uri, patience)
        self.unsigned = False  # a model was logged without a signature (said once, not per trial)

    @classmethod
    def reader(cls, tracking_uri: str | None = None) -> Tracker:
        """A Tracker for questions about studies (best, report, load): the store is checked
        now, so a wrong URI fails at once instead of after ``--patience`` of retries."""
        tracker = cls(tracking_uri)
        tracker.check()
        return tracker

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
        experiment = self.patience.call(self.client.get_experiment_by_name, name)
        if experiment is None:
            def create() -> str:
                try:
                    return self.client.create_experiment(name)
                except MlflowException as error:
                    if error.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    made = self.client.get_experiment_by_name(name)  # by another process
                    if made is None:
                        raise
                    return made.experiment_id

            return self.once(create, lambda: getattr(self.client.get_experiment_by_name(name),
                                                     "experiment_id", None))
        _check_alive(experiment)
        return experiment.experiment_id

    def choose_experiment(self, given: str | None, fallback: str) -> tuple[str, str]:
        """``(id, name)`` of a study's experiment: ``given`` (an argument, a flag, the
        recipe's ``EXPERIMENT``), else the one the user's MLflow setup chose (see
        :func:`user_experiment`), else ``fallback``."""
        chosen_id, chosen_name = (None, None) if given else user_experiment()
        if chosen_id and self.uri == mlflow.get_tracking_uri():  # an id means nothing elsewhere
            try:
                experiment = self.patience.call(self.client.get_experiment, chosen_id)
            except MlflowException:
                raise TrackingError(f"MLFLOW_EXPERIMENT_ID / mlflow.set_experiment chose experiment "
                                    f"id {chosen_id}, which {self.uri} does not have") from None
            _check_alive(experiment)
            return experiment.experiment_id, experiment.name
        name = given or chosen_name or fallback
        return self.experiment_id(name), name

    def start_run(self, experiment_id: str, name: str, kind: str,
                  parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {KIND_TAG: kind, **(tags or {})}
        if parent_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        all_tags[CREATE_TAG] = request = uuid.uuid4().hex
        run = self.once(
            lambda: self.client.create_run(experiment_id, run_name=name, tags=all_tags),
            lambda: next(iter(self.client.search_runs([experiment_id], f"tags.`{CREATE_TAG}` = '{request}'",
                                                      max_results=1)), None))
        return run.info.run_id

    def once(self, create: Callable[[], T], find: Callable[[], T | None]) -> T:
        """``create()``, retried as :class:`Patience` retries, yet made once: before a retry,
        ``find()`` looks for what an attempt whose reply was lost made after all."""
        tried = False

        def attempt() -> T:
            nonlocal tried
            if tried and (found := find()) is not None:
                return found
            tried = True
            return create()

        return self.patience.call(attempt)

    def outer_run(self, experiment_id: str) -> str | None:
        """The run the user has active around the search (a notebook's ``with
        mlflow.start_run():``), if it is in this store and experiment: the study nests under it."""
        run = mlflow.active_run()
        if run is None or run.info.experiment_id != experiment_id or self.uri != mlflow.get_tracking_uri():
            return None
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

    def read_json(self, run_id: str, path: str) -> Any:
        """What :meth:`log_json` wrote at ``path``; None if the run has no such artifact."""
        try:
            with tempfile.TemporaryDirectory() as folder:
                with open(self.download(run_id, path, folder), encoding="utf-8") as file:
                    return json.load(file)
        except (MlflowException, OSError, ValueError):
            return None

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

        logged = self.once(
            lambda: self.client.create_logged_model(experiment_id, name="model", source_run_id=run_id,
                                                    params={k: format_value(v) for k, v in params.items()}),
            lambda: next(iter(self.client.search_logged_models(
                [experiment_id], f"source_run_id = '{run_id}' AND name = 'model'", max_results=1)), None))
        try:
            def output() -> Any:  # the run's link to this model, if a retried request made it
                outputs = getattr(self.client.get_run(run_id).outputs, "model_outputs", ())
                return next((o for o in outputs if o.model_id == logged.model_id), None)

            link = [LoggedModelOutput(logged.model_id, 0)]
            self.once(lambda: self.client.log_outputs(run_id, link), output)
            with tempfile.TemporaryDirectory() as folder:
                local = os.path.join(folder, "model")
                description = Model(artifact_path=logged.artifact_location, run_id=run_id,
                                    model_uuid=logged.model_id, model_id=logged.model_id)
                described = signature(model, x_sample)
                if described is None and not self.unsigned:
                    self.unsigned = True
                    _log.warning("the models are logged without a signature: data() returns no test "
                                 "inputs (x_test) to describe, or MLflow cannot describe them")
                with _without_warning("mlflow.keras.save", _UNSIGNED):  # said above, once
                    mlflow.keras.save_model(model, local, mlflow_model=description, signature=described,
                                            pip_requirements=keras_requirements())
                self.patience.call(self.client.log_model_artifacts, logged.model_id, local)
        except BaseException:  # interrupted, or failed: no model left PENDING forever
            with suppress(Exception):  # a few seconds' patience: an interrupted user is waiting
                Patience(self.uri, 10).call(self.client.finalize_logged_model, logged.model_id,
                                            LoggedModelStatus.FAILED)
            raise
        self.patience.call(self.client.finalize_logged_model, logged.model_id, LoggedModelStatus.READY)

    def delete_models(self, run_id: str) -> list[str]:
        """Delete the files of the models ``run_id`` logged and mark the models deleted, unless
        a registered model version comes from the run; the ids of those deleted. The run, its
        params, metrics and tags stay."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if self.patience.call(self.client.search_model_versions, f"run_id = '{run_id}'"):
            return []  # (a version's model_id may read None: the run is what it records)
        run = self.patience.call(self.client.get_run, run_id)
        deleted = []
        for output in run.outputs.model_outputs if run.outputs else ():
            logged = self.patience.call(self.client.get_logged_model, output.model_id)
            files = get_artifact_repository(logged.artifact_location, tracking_uri=self.uri)
            self.patience.call(files.delete_artifacts)
            self.patience.call(self.client.delete_logged_model, output.model_id)
            deleted.append(output.model_id)
        return deleted

    def logged_model_name(self, model_id: str) -> str:
        return self.patience.call(self.client.get_logged_model, model_id).name

    def sender(self, run_id: str) -> MetricSender:
        return MetricSender(self, run_id)

    def set_status(self, run_id: str, status: str) -> None:
        self.patience.call(self.client.update_run, run_id, status=status)

    def try_tag(self, run_id: str, key: str, value: str) -> bool:
        """One attempt, no waiting (a heartbeat: the next one comes anyway); whether it landed."""
        try:
            self.client.set_tag(run_id, key, value)
            return True
        except Exception:  # noqa: BLE001 - a store away now is the trials' to report
            return False

    def log_file(self, run_id: str, path: str, folder: str) -> None:
        self.patience.call(self.client.log_artifact, run_id, path, folder)

    def register(self, name: str, model_id: str, run_id: str, tags: dict[str, str],
                 alias: str) -> ModelVersion:
        """A new version of registered model ``name`` (created if new) from a logged model,
        given ``alias``."""
        try:
            self.patience.call(self.client.create_registered_model, name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise  # else it exists already and gets one more version
        with using_uri(self.uri):  # the registry resolves the models:/ source through it
            version = self.patience.call(self.client.create_model_version, name, f"models:/{model_id}",
                                         run_id=run_id, model_id=model_id, tags=tags)
        self.patience.call(self.client.set_registered_model_alias, name, alias, version.version)
        return self.patience.call(self.client.get_model_version, name, version.version)

    # Reads: every question the package asks the store, retried as the writes are.

    def run(self, run_id: str) -> Run:
        return self.patience.call(self.client.get_run, run_id)

    def runs(self, experiment_id: str, query: str = "", *, order_by: list[str] | None = None,
             limit: int | None = None) -> Iterator[Run]:
        """The runs of an experiment that match ``query``, page by page; the first ``limit`` only."""
        token, seen = None, 0
        while limit is None or seen < limit:
            page = self.patience.call(self.client.search_runs, [experiment_id], query,
                                      max_results=_PAGE if limit is None else min(_PAGE, limit - seen),
                                      order_by=order_by, page_token=token)
            yield from page
            seen, token = seen + len(page), page.token
            if not token:
                return

    def trial_runs(self, experiment_id: str, study_run_id: str,
                   condition: str | None = None) -> Iterator[Run]:
        """Every trial run of a study (that meets the search ``condition``)."""
        query = f"tags.`{KIND_TAG}` = 'trial' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{study_run_id}'"
        return self.runs(experiment_id, f"{query} and {condition}" if condition else query)

    def experiment(self, name: str) -> Experiment | None:
        return self.patience.call(self.client.get_experiment_by_name, name)

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.patience.call(self.client.search_experiments)]

    def metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every value of metric ``key`` the run logged, by step."""
        return sorted(self.patience.call(self.client.get_metric_history, run_id, key), key=lambda m: m.step)

    def download(self, run_id: str, path: str, folder: str) -> str:
        with quiet_downloads():
            return self.patience.call(self.client.download_artifacts, run_id, path, folder)

    def model_source_run(self, uri: str) -> str:
        """The run that logged the model at ``runs:/…`` or ``models:/…`` (a name@alias, a
        name/version, or a logged model's id)."""
        if uri.startswith("runs:/"):
            return uri.removeprefix("runs:/").split("/", 1)[0]
        name = uri.removeprefix("models:/")
        if "@" in name:
            found = self.patience.call(self.client.get_model_version_by_alias, *name.split("@", 1)).run_id
        elif "/" in name:
            found = self.patience.call(self.client.get_model_version, *name.split("/", 1)).run_id
        else:
            found = self.patience.call(self.client.get_logged_model, name).source_run_id
        if found is None:
            raise TrackingError(f"the model {uri} was not logged by a run")
        return found
