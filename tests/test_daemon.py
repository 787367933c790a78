"""Spark's Python daemon for a study: which modules it imports, and that it still serves Spark."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from tuning.daemon import PRELOAD, imported_modules, spark_config

RECIPE = '''
import os.path
import keras, numpy as np
from sklearn.model_selection import train_test_split
from . import sibling
import helpers
from models.small import net

try:
    import optional_thing
except ImportError:
    optional_thing = None


def data():
    from sklearn.datasets import load_digits
    return load_digits()


def model(x_train, y_train, x_test, y_test):
    units = <<quniform(8, 32, 8)>>
    rate = {{uniform(0, 1)}}
    import json


if __name__ == "__main__":
    from hyperas import optim
    import argparse
else:
    import csv
'''


def test_a_recipe_s_imports_except_its_script_part_and_its_own_modules(tmp_path):
    (tmp_path / "helpers.py").write_text("")
    (tmp_path / "models").mkdir()
    path = tmp_path / "recipe.py"
    assert imported_modules(RECIPE, str(path)) == (
        "os.path", "keras", "numpy", "sklearn.model_selection", "optional_thing", "sklearn.datasets",
        "json", "csv")


def test_a_source_that_does_not_parse_preloads_only_what_a_trial_needs(tmp_path):
    broken = "import keras\ndef model(:\n"
    assert imported_modules(broken, str(tmp_path / "r.py")) == ()
    assert spark_config(broken, str(tmp_path / "r.py")) == {
        "spark.python.daemon.module": "tuning.daemon", f"spark.executorEnv.{PRELOAD}": "tuning.spark"}
    config = spark_config("import keras\nimport tuning.spark\n", str(tmp_path / "r.py"))
    assert config[f"spark.executorEnv.{PRELOAD}"] == "tuning.spark,keras"  # each once


def _daemon(tmp_path: Path, modules: str) -> tuple[int, list[str], str]:
    """Start the daemon as Spark does, read the port it tells Spark, then close its stdin
    (Spark's way to stop it): the port, its command line once it listened, its stderr."""
    with subprocess.Popen([sys.executable, "-m", "tuning.daemon", "pyspark.worker"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, PRELOAD: modules, "PYTHONPATH": str(tmp_path)}) as process:
        port = struct.unpack("!i", process.stdout.read(4))[0]
        command = Path(f"/proc/{process.pid}/cmdline").read_text().split("\0")
        process.stdin.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
    return port, command, stderr


def test_the_daemon_tells_spark_its_port_whatever_the_modules_print_or_raise(tmp_path):
    (tmp_path / "noisy.py").write_text("print('hello from noisy')\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('not on this host')\n")
    (tmp_path / "exits.py").write_text("raise SystemExit(3)\n")
    port, command, stderr = _daemon(tmp_path, "noisy,broken,exits,no_such_module")
    assert 0 < port < 65536
    assert command[1:4] == ["-m", "tuning.daemon", "pyspark.worker"]
    assert "hello from noisy" in stderr


def test_a_module_that_starts_a_thread_turns_the_daemon_into_pyspark_s_own(tmp_path):
    # A fork copies no thread: workers forked from this process could wait on it forever.
    (tmp_path / "threaded.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    port, command, _ = _daemon(tmp_path, "threaded")
    assert 0 < port < 65536
    assert command[1:4] == ["-m", "pyspark.daemon", "pyspark.worker"]
