"""A trial's per-epoch metrics, sent from a background thread so that ``fit`` never waits."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mlflow.entities import Metric

from tuning.errors import TrackingError

if TYPE_CHECKING:
    from tuning.tracking import Tracker

SEND_INTERVAL = 1.0  # seconds over which per-epoch metrics are gathered into one request


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

