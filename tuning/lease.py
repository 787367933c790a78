"""One process holds a study at a time: a lease on the study run, kept alive by a heartbeat.

The holder writes ``tuning.lease`` (host, process id, a token) when it starts or resumes
the study, and ``tuning.heartbeat`` (seconds since the epoch) every ``INTERVAL`` seconds
from a background thread. ``--resume`` refuses a study whose holder is alive: its
heartbeat is recent and, on this host, its process still runs. ``force`` takes over a
lease whose holder is known to be gone (a host that went down).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Any

import psutil
from mlflow.entities import Run

from tuning.errors import StudyBusyError
from tuning.tracking import Tracker

LEASE_TAG = "tuning.lease"
HEARTBEAT_TAG = "tuning.heartbeat"
INTERVAL = 15.0  # seconds between heartbeats
STALE = 4 * INTERVAL  # a heartbeat older than this: the holder is gone
_SETTLE = 1.0  # seconds two processes taking a lease at once wait before they read who won


class Lease:
    """This process's hold on a study run; ``close()`` stops the heartbeat."""

    def __init__(self, tracker: Tracker, run_id: str = ""):
        self._tracker = tracker
        self._run_id = run_id  # "" until the run it holds exists (see of())
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def tags(self) -> dict[str, str]:
        return {LEASE_TAG: json.dumps(self.holder), HEARTBEAT_TAG: f"{time.time():.0f}"}

    @classmethod
    def take(cls, tracker: Tracker, run: Run, force: bool = False) -> Lease:
        """Hold ``run`` (a study being resumed), unless a live process holds it."""
        holder = _live_holder(run)
        if holder is not None and not force:
            raise StudyBusyError(
                f"study {run.info.run_id} is still running in process {holder['pid']} on "
                f"{holder['host']} (last heartbeat {time.time() - float(run.data.tags[HEARTBEAT_TAG]):.0f} s "
                "ago): wait for it to end, stop it, or pass --force if that process is gone")
        lease = cls(tracker, run.info.run_id)
        tracker.log(run.info.run_id, tags=lease.tags)
        time.sleep(_SETTLE)  # another --resume that read the old lease has written its own by now
        current = tracker.run(run.info.run_id).data.tags.get(LEASE_TAG)
        if current != lease.tags[LEASE_TAG]:
            raise StudyBusyError(f"study {run.info.run_id} was just resumed by another process "
                                 f"({json.loads(current or '{}').get('pid')}): let that one run")
        return lease

    def of(self, run_id: str) -> Lease:
        """This lease, on the run created with its tags."""
        self._run_id = run_id
        return self

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name="tuning-lease", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._tracker.try_tag(self._run_id, HEARTBEAT_TAG, f"{time.time():.0f}")


def _live_holder(run: Run) -> dict[str, Any] | None:
    """Who holds ``run``, if that process is alive; else None."""
    tags = run.data.tags
    if run.info.status != "RUNNING" or LEASE_TAG not in tags:
        return None
    holder = json.loads(tags[LEASE_TAG])
    if time.time() - float(tags.get(HEARTBEAT_TAG, 0)) > STALE:
        return None
    if holder.get("host") == socket.gethostname():
        alive = psutil.pid_exists(holder["pid"]) and holder["pid"] != os.getpid()
        return holder if alive else None
    return holder
