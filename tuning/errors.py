"""One error tree for the whole package.

``TuningError`` is the root. Errors that stop a study before or while it runs derive
from it; an exception raised by the user's own model code is not wrapped: it fails that
one trial (its run ends FAILED with the traceback attached) and the search goes on.
"""

from __future__ import annotations

__all__ = [  # the rest is this package's own
    "ConfigurationError", "NoTrialsError", "RecipeError", "StoreError", "StudyBusyError",
    "TemplateError", "TrackingError", "TuningError",
]


class TuningError(Exception):
    """Root of every error this package raises on purpose."""


class TemplateError(TuningError, ValueError):
    """A recipe's markers cannot be compiled: the message names the file, line and fix."""

    def __init__(self, message: str, filename: str = "<string>", line: int | None = None):
        self.filename = filename
        self.line = line
        self.reason = message
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {message}")


class RecipeError(TuningError, ValueError):
    """A recipe is missing ``data``/``model`` or its ``data()`` cannot be used."""


class TrackingError(TuningError):
    """The tracking store cannot be reached or refuses a request."""


class StoreError(TrackingError):
    """The tracking server answered, with an error of its own (a full disk, a broken database)."""


class NoTrialsError(TuningError, LookupError):
    """A query found no finished trial (empty experiment, or every trial failed)."""


class ConfigurationError(TuningError, ValueError):
    """A setting (an argument, a flag, a recipe constant) has a value that cannot work."""


class StudyBusyError(TuningError):
    """A study to resume is still held by a live process."""
