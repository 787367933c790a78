"""Ctrl-C and SIGTERM stop a study at any moment, and are never lost.

The ``tuning`` command installs :func:`request_stop` for SIGINT and SIGTERM: it raises
``KeyboardInterrupt`` at once, so the running trial and the study end KILLED. Python
drops an exception raised while the main thread runs a garbage-collection callback
(TensorFlow registers some, and start-up runs many collections), so the request is also
kept, and the study asks for it between its steps with :func:`check`.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

_requested = threading.Event()
_next_hook = sys.unraisablehook


def install() -> None:
    """Stop on SIGINT and SIGTERM (runs end KILLED), even if started with SIGINT ignored."""
    global _next_hook
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    if sys.unraisablehook is not _keep_quiet_about_dropped_stops:
        _next_hook, sys.unraisablehook = sys.unraisablehook, _keep_quiet_about_dropped_stops


def _keep_quiet_about_dropped_stops(unraisable: Any) -> None:
    """No "Exception ignored in: … KeyboardInterrupt" for a stop Python dropped: it is kept,
    and :func:`check` raises it again where the study can stop."""
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _requested.is_set()):
        _next_hook(unraisable)


def request_stop(signum: int, frame: Any) -> None:
    _requested.set()
    raise KeyboardInterrupt


def check() -> None:
    """Raise the ``KeyboardInterrupt`` of a stop request that Python dropped."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt


def handled() -> None:
    """The interrupt reached the study: nothing is pending any more."""
    _requested.clear()
