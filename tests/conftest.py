"""Shared fixtures: a real sqlite tracking store, recipe files, a real ``mlflow server``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tuning.ui import server_environment

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# A recipe small enough for CI: an MLP on the 8x8 digits, one epoch.
DIGITS_DATA = '''
import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = keras.utils.to_categorical(digits.target, 10)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    return x_train, y_train, x_test, y_test
'''

DIGITS_MODEL = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(<<quniform(8, 32, 8)>>, activation=<<choice(["relu", "tanh"])>>),
        keras.layers.Dropout(<<uniform(0, 0.5)>>),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=<<choice([32, 64])>>,
            validation_data=(x_test, y_test), verbose=0)
    return net
'''


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh sqlite tracking store (artifacts beside it)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe file: the digits data(), constants, then the given model source."""
    def write(model: str = DIGITS_MODEL, name: str = "recipe.py", epochs: int = 1,
              header: str = DIGITS_DATA, extra: str = "") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(header) + f"\nEPOCHS = {epochs}\n" + textwrap.dedent(extra)
                        + textwrap.dedent(model))
        return path
    return write


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder: MLflow's default store lands there, not in the repo."""
    monkeypatch.chdir(tmp_path)
    # What an earlier test set with MLflow's own calls is the process's setup, which a
    # search honours; each test starts as a fresh process would.
    mlflow.set_tracking_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, *extra: str, env: dict[str, str] | None = None,
                 backend: str | None = None) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:port over a sqlite store in ``folder`` (or the
    ``backend`` store URI given), artifacts in ``folder``/artifacts; waits for /health."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    process = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend or f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), *extra],
        cwd=folder, stdout=open(folder / "server.log", "a"), stderr=subprocess.STDOUT,
        start_new_session=True, env={**server_environment(), **(env or {})})
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(process)
                pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and its workers by the PID of its process group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` shared by the tests of a session."""
    port = free_port()
    process = start_server(tmp_path_factory.mktemp("server"), port)
    yield f"http://127.0.0.1:{port}"
    stop_server(process)
