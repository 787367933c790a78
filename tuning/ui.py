"""``tuning ui``: the MLflow UI on the store ``tuning run`` writes to.

Example::

    from tuning.ui import serve
    serve(None, port=5000)     # browse sqlite:///mlflow.db of this folder; Ctrl-C stops it
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuning.fluent import resolve_uri

START_TIMEOUT = 120.0  # seconds: a first start migrates the sqlite schema, slow on small machines


def server_environment() -> dict[str, str]:
    """The environment for an ``mlflow ui`` or ``mlflow server`` that serves tracked runs.

    MLflow 3 servers start background job consumers (huey, for its GenAI jobs) that take
    about 20 CPU-seconds to import MLflow and then idle: on a 2-core machine that is time
    taken from the trials. Browsing runs needs none of them, so they are off unless
    ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set.
    """
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def serve(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000,
          say: Callable[[str], Any] = print) -> int:
    """Run ``mlflow ui`` on the store until interrupted; return its exit code.

    The store is resolved exactly as ``tuning run`` resolves it (flag, then
    ``MLFLOW_TRACKING_URI``, then MLflow's default in this folder), so the UI shows the
    runs the last search wrote. A tracking server already has its UI: its address is printed.
    """
    uri = resolve_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        say(f"{uri} is a tracking server with its own UI: open {uri} in a browser")
        return 0
    address = f"http://{host}:{port}"
    if not _free(host, port):  # mlflow would take half a minute to find out, and exit 0
        say(f"port {port} on {host} is taken (another UI?): open {address}, or choose another --port")
        return 1
    say(f"starting the MLflow UI on {address} (about 10 s) …")
    # Its own session, so that stopping it also stops the web workers it forks. One worker:
    # a personal UI needs no more, and it starts in seconds instead of half a minute. Its
    # own messages (a request log, warnings, a traceback when stopped) go to a log file.
    log = tempfile.NamedTemporaryFile(prefix="tuning-ui-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                "--host", host, "--port", str(port), "--workers", "1"],
                               start_new_session=True, env=server_environment(), stdout=log,
                               stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not _started(process, address):
            said = Path(log.name).read_text(errors="replace").strip().splitlines()[-15:]
            say(f"mlflow ui did not start on {address} (exit code {process.poll()}); it said:\n"
                + "\n".join(said) + f"\n(all of it in {log.name})")
            return 1
        say(f"MLflow UI: {address}  (store {uri}; Ctrl-C stops it; MLflow's own messages: {log.name})")
        return process.wait()
    except KeyboardInterrupt:
        Path(log.name).unlink(missing_ok=True)  # stopped as asked: its log is of no more use
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(process)
        log.close()


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _started(process: subprocess.Popen[bytes], address: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(address + "/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # the server and its workers, at once
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the UI like Ctrl-C does
