"""A real ``mlflow server`` for the benchmarks: started on 127.0.0.1 on a free port, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tuning.ui import server_environment


def start_server(folder: Path, store: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A real ``mlflow server`` over ``store`` (default: a new sqlite file in ``folder``) with
    proxied artifacts; waits for /health."""
    folder.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    process = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", store or f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, stdout=(folder / "server.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, env=server_environment())  # own process group: its workers stop with it
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                print(f"mlflow server {uri} (pid {process.pid})", flush=True)
                return process, uri
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(process)
                raise SystemExit("mlflow server did not start:\n"
                                 + (folder / "server.log").read_text()[-3000:]) from None
            time.sleep(0.5)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
