"""What a trial is judged by, and how a person reads its result.

Example::

    >>> objective = Objective.create("accuracy")
    >>> objective.loss(0.97), objective.shown(-0.97)
    (-0.97, 'accuracy 0.97 ▲')
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.errors import ConfigurationError

__all__ = ["Objective"]  # the rest is this package's own

_ACCURACY_ALIASES = {"accuracy": ("acc", "categorical_accuracy", "sparse_categorical_accuracy",
                                  "binary_accuracy", "compile_metrics")}


@dataclass(frozen=True)
class Objective:
    """What a trial is judged by: ``metric`` (e.g. ``accuracy``, ``val_loss``) and ``mode``.

    Names starting with ``val_`` come from the last epoch of the last ``fit``; other names
    are measured by ``model.evaluate(x_test, y_test)`` (falling back to the last epoch).
    """

    metric: str = "accuracy"
    mode: str = "max"

    @classmethod
    def create(cls, metric: str | None = None, mode: str | None = None) -> Objective:
        metric = metric or "accuracy"
        if mode is None:
            mode = "min" if any(w in metric for w in ("loss", "error", "mse", "mae")) else "max"
        if mode not in ("min", "max"):
            raise ConfigurationError(f"mode must be 'min' or 'max', got {mode!r}")
        return cls(metric, mode)

    def loss(self, value: float) -> float:
        """The value hyperopt minimises."""
        return -value if self.mode == "max" else value

    @property
    def label(self) -> str:
        """The objective as a person reads it: ``accuracy ▲`` (maximised), ``val_loss ▼``."""
        return f"{self.metric} {'▲' if self.mode == 'max' else '▼'}"

    def shown(self, loss: float, own: bool = False) -> str:
        """A trial's result in the user's terms: ``accuracy 0.9756 ▲``, not hyperopt's -0.9756.
        ``own``: the loss model() returned itself (hyperas' dict), shown as it is."""
        if own:  # (+ 0.0: a negated zero, -0.0, reads 0)
            return f"loss {loss + 0.0:.4g} ▼ (model()'s)"
        name, arrow = self.label.rsplit(" ", 1)
        return f"{name} {self.loss(loss) + 0.0:.4g} {arrow}"

    def find(self, *sources: dict[str, float]) -> float | None:
        names = (self.metric, *_ACCURACY_ALIASES.get(self.metric, ()))
        for source in sources:
            for name in names:
                if name in source:
                    return source[name]
        return None

    @property
    def curve_keys(self) -> tuple[str, ...]:
        """The epoch metrics a learning curve is read from, best first: validation, then training."""
        names = (self.metric, *_ACCURACY_ALIASES.get(self.metric, ()))
        if self.metric.startswith("val_"):
            return names
        return (*(f"val_{n}" for n in names), *names)

    def epoch_loss(self, logs: dict[str, float]) -> float | None:
        """The objective as measured on one epoch's logs, as a loss; None if not logged."""
        value = next((logs[k] for k in self.curve_keys if k in logs), None)
        return None if value is None else self.loss(value)
