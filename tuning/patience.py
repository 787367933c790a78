"""How long, and how, a write is retried when the tracking store does not answer.

A store that is away (refused, reset, timed out, a proxy's 502/503/504, "too many
requests") is retried with backoff for up to ``--patience`` seconds; a server that
answers with an error of its own (a full artifact disk, a broken database) is tried a
few times, quickly, then named in a :class:`~tuning.errors.StoreError`.
"""

from __future__ import annotations

import errno
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException, RestException

from tuning.errors import ConfigurationError, StoreError, TrackingError

_log = logging.getLogger("tuning")
DEFAULT_PATIENCE = 600.0  # seconds a tracking server may be away before the study stops

T = TypeVar("T")


ABSENT, SERVER = "absent", "server"
_AWAY_CODES = {429, 502, 503, 504}  # busy, or a proxy in front of a server that is away
# A local store's path that cannot be used as it is: waiting would not change it.
_PATH_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}
_SERVER_TRIES = 3  # a server error may be passing (a locked database): tried this often, quickly


def _fault(error: BaseException) -> str | None:
    """``ABSENT``: the store cannot be reached now; ``SERVER``: it answered with an error
    of its own (a full disk); None: the request itself is wrong."""
    import requests

    code = None
    if isinstance(error, requests.HTTPError) and error.response is not None:
        code = error.response.status_code  # an artifact upload or download
    elif isinstance(error, MlflowException):
        found = re.search(r"failed with error code (\d+)|too many (\d+) error responses", error.message)
        code = int(found.group(1) or found.group(2)) if found else None
        if error.error_code in {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}:
            return ABSENT
        if code is None and "failed with" in error.message:  # refused, reset, timed out
            return ABSENT
        if code is None:  # the server's own error reply, or a wrong request
            own = isinstance(error, RestException) and error.error_code == "INTERNAL_ERROR"
            return SERVER if own else None
    elif isinstance(error, OSError):  # (requests' errors too: a server that does not answer)
        return None if error.errno in _PATH_ERRNOS else ABSENT
    if code is None:
        return None
    return ABSENT if code in _AWAY_CODES else SERVER if code >= 500 else None


def _server_says(error: BaseException) -> str:
    """What the server's error reply says, short. An artifact upload's reply says no more
    than its status (the server logs why: a full disk, say), so the request is named."""
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        text = f"HTTP {error.response.status_code}: {error.response.text}"
    else:
        text = str(getattr(error, "message", error))
    request = re.search(r"API request to (\S+) failed", text)
    status = re.search(r"error code (\d+)|too many (\d+) error responses|HTTP (\d+)", text)
    body = re.search(r"Response body: '(.{0,300})", text) or re.search(r"HTTP \d+: (.{0,300})", text)
    if status and request:
        code = next(g for g in status.groups() if g)
        said = " ".join(body.group(1).split()) if body else "Internal Server Error"
        return (f"HTTP {code} ({said}) to {urllib.parse.urlparse(request.group(1)).path}; the server's "
                "log says why (a full artifact disk, a broken database)")
    return " ".join(text.split())[:300]


class Patience:
    """Retries writes while the tracking store is away, with backoff, for a bounded time.

    The time counts from the first failure of a call; past it, :class:`TrackingError`
    stops the study (every trial delivered so far is on the server; ``--resume`` goes on).
    """

    def __init__(self, uri: str, seconds: float):
        self.uri = uri
        self.seconds = seconds

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline, delay, server_errors = None, 0.5, 0
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - sorted below: transient or not
                fault = _fault(error)
                if fault is None and isinstance(error, OSError):
                    raise ConfigurationError(
                        f"the tracking store {self.uri} cannot use {error.filename or 'a path'}: "
                        f"{error.strerror} "
                        "(is the experiment's artifact location a folder this process may write?)") from error
                if fault is None:
                    raise
                if fault == SERVER:
                    server_errors += 1
                    if server_errors >= _SERVER_TRIES:
                        raise StoreError(f"the tracking server {self.uri} answered with an error of "
                                         f"its own: {_server_says(error)}") from error
                    time.sleep(server_errors)
                    continue
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
