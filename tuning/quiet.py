"""TensorFlow's start-up chatter, kept out of the user's terminal.

Importing TensorFlow 2.21 prints absl INFO lines (oneDNN, CPU features) before its
logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them. Keras is first
imported inside :func:`tensorflow_start_up`, which holds back exactly those lines and
passes on anything else written to stderr meanwhile; it also sets
``TF_CPP_MIN_LOG_LEVEL=2`` (unless set) for the same lines logged later, as the
``tuning`` command does.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

_CHATTER = ("All log messages before absl::InitializeLog", "oneDNN custom operations are on",
            "cpu_feature_guard", "To enable the following instructions",
            "rebuild TensorFlow with the appropriate compiler flags")


@contextmanager
def tensorflow_start_up() -> Iterator[None]:
    if "keras" in sys.modules:  # imported before us: its lines, if any, are out already
        yield
        return
    # The lines TensorFlow logs once its logging is up (at its first operation) heed this;
    # a user who wants them sets it to 0.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(c in line for c in _CHATTER))
            if kept:
                sys.stderr.write(kept)
