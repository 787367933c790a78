"""The voting ensemble of hyperas' API, on Keras 3."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tuning import ConfigurationError
from tuning.ensemble import VotingModel

ROWS = np.zeros((4, 1), dtype="float32")


def fixed(*probabilities: float, activation: str = "softmax") -> keras.Model:
    """A real Keras model that predicts ``probabilities`` for every row."""
    model = keras.Sequential(
        [keras.Input(shape=(1,)), keras.layers.Dense(len(probabilities), activation=activation)]
    )
    bias = (
        np.log(probabilities)
        if activation == "softmax"
        else np.log(np.array(probabilities) / (1 - np.array(probabilities)))
    )
    model.layers[0].set_weights([np.zeros((1, len(probabilities))), bias])
    return model


def test_hard_voting_is_a_weighted_majority_and_a_tie_goes_to_the_lower_class():
    models = [fixed(0.6, 0.1, 0.3), fixed(0.1, 0.2, 0.7), fixed(0.2, 0.1, 0.7)]
    assert VotingModel(models).predict(ROWS).tolist() == [2, 2, 2, 2]  # hyperas took max(set(votes)) too
    assert VotingModel(models, weights=[3, 1, 1]).predict(ROWS).tolist() == [0, 0, 0, 0]
    assert VotingModel(models[:2]).predict(ROWS).tolist() == [0, 0, 0, 0]  # hyperas: 2, the highest


def test_soft_voting_averages_the_probabilities_equally_without_weights():
    models = [fixed(0.5, 0.4, 0.1), fixed(0.1, 0.5, 0.4)]
    assert VotingModel(models, voting="soft").predict(ROWS).tolist() == [1, 1, 1, 1]
    # (with [4, 1] both classes score 2.1 of 5: a tie that floating point decides by the CPU)
    assert VotingModel(models, voting="soft", weights=[5, 1]).predict(ROWS).tolist() == [0, 0, 0, 0]


def test_a_sigmoid_output_votes_between_class_0_and_1():
    models = [
        fixed(0.8, activation="sigmoid"),
        fixed(0.3, activation="sigmoid"),
        fixed(0.9, activation="sigmoid"),
    ]
    assert VotingModel(models).predict(ROWS).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"voting": "most"}, "voting must be 'hard' or 'soft'"), ({"weights": [1.0]}, "2 models but 1 weights")],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        VotingModel([fixed(0.5, 0.5), fixed(0.5, 0.5)], **kwargs)
