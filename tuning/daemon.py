"""Spark's Python daemon for a study: the study's modules imported once, before it forks.

On Linux and macOS each Spark executor starts one Python daemon (``pyspark.daemon``) and
forks a worker from it for each task slot. A plain daemon imports nothing, so every
worker imports TensorFlow, MLflow and the recipe's other modules itself: seconds of CPU
each (two workers on 2 cores: about 13 s of the cores the trials need, before the first
trial). This daemon imports them once and then forks: its workers start with them loaded,
and a worker that dies is replaced in a fraction of a second.

Only modules are imported here, never the recipe itself: its ``data()`` and ``model()``
run in the workers after the fork, where TensorFlow starts its thread pools (at its first
operation). Should a module start a Python thread on import (which a fork does not
copy), the daemon starts over as PySpark's own.

Example (what :mod:`tuning.cluster` does for the sessions it builds)::

    builder = SparkSession.builder
    for key, value in spark_config(open("recipes/digits_cnn.py").read(), "recipes/digits_cnn.py").items():
        builder = builder.config(key, value)
"""

from __future__ import annotations

import ast
import contextlib
import gc
import importlib
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

PRELOAD = "TUNING_SPARK_PRELOAD"  # the executors' environment variable naming the modules
_TRIAL_MODULES = ("tuning.spark",)  # what runs a trial: tuning.trial, Keras, MLflow, hyperopt
# A marker is no Python: the imports are all a daemon needs from the file.
_MARKER = re.compile(r"<<.*?>>|\{\{.*?\}\}", re.DOTALL)


def spark_config(source: str, filename: str) -> dict[str, str]:
    """The Spark settings that run this daemon on every executor, to import what the
    recipe ``source`` (from ``filename``) imports and what a trial needs."""
    modules = _TRIAL_MODULES + imported_modules(source, filename)
    return {"spark.python.daemon.module": "tuning.daemon",
            f"spark.executorEnv.{PRELOAD}": ",".join(dict.fromkeys(modules))}


def imported_modules(source: str, filename: str) -> tuple[str, ...]:
    """The absolute imports of a recipe's ``source``, except those of its
    ``if __name__ == "__main__":`` part and of modules in its own folder: a worker puts that
    folder first on ``sys.path`` when it runs the recipe, so the daemon could import an
    installed module of the same name in their place. Nothing for a source that does not
    parse (its error is the study's to report)."""
    try:
        tree = ast.parse(_MARKER.sub("0", source))
    except (SyntaxError, ValueError):
        return ()
    folder = Path(filename).parent
    names = [name for name in _imports(tree.body) if not _in_folder(name.split(".")[0], folder)]
    return tuple(dict.fromkeys(names))


def _imports(body: Iterable[ast.stmt]) -> Iterator[str]:
    for node in body:
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            yield from _imports(node.orelse)
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                yield from (alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                yield inner.module


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _in_folder(name: str, folder: Path) -> bool:
    return (folder / f"{name}.py").exists() or (folder / name).is_dir()


def preload(modules: Iterable[str]) -> None:
    """Import ``modules``, skipping those that fail: the worker that needs one reports why.
    Their output goes to stderr: this process's stdout tells Spark where it listens."""
    from tuning.quiet import tensorflow_start_up

    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        with tensorflow_start_up():
            for name in modules:
                with contextlib.suppress(Exception, SystemExit):
                    importlib.import_module(name)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    gc.freeze()  # the workers' collections need not touch (and so copy) what they inherit


def _main() -> None:
    preload(filter(None, os.environ.get(PRELOAD, "").split(",")))
    if threading.active_count() > 1:  # a fork copies no thread: start over as PySpark's daemon
        os.execv(sys.executable, [sys.executable, "-m", "pyspark.daemon", *sys.argv[1:]])
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    _main()
