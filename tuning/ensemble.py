"""A voting ensemble of Keras classifiers: ``hyperas.ensemble.VotingModel``, on Keras 3.

hyperas' own ``ensemble.py`` cannot be imported on Keras 3 (it imports
``keras.models.model_from_yaml``); this one keeps its constructor and ``predict``.

Example::

    from tuning import optim
    ensemble = optim.best_ensemble(3, model=create_model, data=data, algo=tpe.suggest,
                                   max_evals=10, trials=Trials())
    classes = ensemble.predict(x_test)       # one class index per row
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tuning.errors import ConfigurationError


class VotingModel:
    """A (weighted) majority vote of classifiers, with ``predict`` as one model has it.

    ``voting="hard"``: each model votes for its most probable class, each vote counting
    its model's weight (1 without ``weights``); the class with the most votes wins, a
    tie going to the lower class. ``voting="soft"``: the class probabilities are averaged
    with ``weights`` (equal without) and the most probable class wins. A model with one
    sigmoid output votes between class 0 and class 1.
    """

    def __init__(self, model_list: Iterable[Any], voting: str = "hard",
                 weights: Sequence[float] | None = None, nb_classes: int | None = None):
        self.model_list = list(model_list)
        if voting not in ("hard", "soft"):
            raise ConfigurationError(f"voting must be 'hard' or 'soft', got {voting!r}")
        if not self.model_list:
            raise ConfigurationError("a voting model needs at least one model")
        if weights is not None and len(weights) != len(self.model_list):
            raise ConfigurationError(f"{len(self.model_list)} models but {len(weights)} weights: "
                                     "give one weight per model")
        self.voting = voting
        self.weights = weights
        self.nb_classes = nb_classes

    def predict(self, X: Any, batch_size: int = 128, verbose: int = 0) -> np.ndarray:  # noqa: N803 - hyperas' name
        """The winning class index of every row of ``X``."""
        probabilities = np.stack([self._probabilities(m.predict(X, batch_size=batch_size, verbose=verbose))
                                  for m in self.model_list])  # (models, rows, classes)
        weights = np.ones(len(self.model_list)) if self.weights is None else np.asarray(self.weights, float)
        if self.voting == "soft":
            return np.tensordot(weights, probabilities, axes=1).argmax(axis=-1)
        votes = probabilities.argmax(axis=-1)  # (models, rows)
        classes = max(self.nb_classes or 0, probabilities.shape[-1])
        tally = np.zeros((votes.shape[1], classes))
        rows = np.arange(votes.shape[1])
        for weight, vote in zip(weights, votes, strict=True):
            tally[rows, vote] += weight
        return tally.argmax(axis=-1)

    @staticmethod
    def _probabilities(predicted: Any) -> np.ndarray:
        probabilities = np.asarray(predicted, dtype="float64")
        if probabilities.ndim == 1:
            probabilities = probabilities[:, None]
        if probabilities.shape[-1] == 1:  # one sigmoid output: P(class 1)
            probabilities = np.concatenate([1 - probabilities, probabilities], axis=-1)
        return probabilities
