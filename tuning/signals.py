"""Ctrl-C and SIGTERM stop a study at any moment, and are never lost.

The ``tuning`` command installs :func:`request_stop` for SIGINT and SIGTERM: it raises
``KeyboardInterrupt`` at once, so the running trial and the study end KILLED. Python
drops an exception raised while the main thread runs a garbage-collection callback
(TensorFlow registers some, and start-up runs many collections), so the request is also
kept, and the study asks for it between its steps with :func:`check`.
"""

from __future__ import annotations

import threading
from typing import Any

_requested = threading.Event()


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
