"""The marker vocabulary: checked arguments, ints for integer steps, grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hyperopt import hp
from hyperopt.pyll import stochastic

from tuning.distributions import NAMES, Distribution, DistributionError, complete_hyperas


def samples(d: Distribution, n: int = 50) -> list:
    rng = np.random.default_rng(0)
    return [stochastic.sample(d.to_hyperopt("x"), rng=rng) for _ in range(n)]


def test_vocabulary_is_hyperas_with_the_names_its_last_release_lacks():
    import hyperas.distributions as hyperas

    released = {n for n in dir(hyperas) if not n.startswith("_")} - {"conditional", "uniformint"}
    assert set(NAMES) - released == {"uniformint"}  # hyperas' master has it, 0.4.1 not
    complete_hyperas()
    assert {n for n in dir(hyperas) if not n.startswith("_")} == set(NAMES) | {"conditional"}
    assert hyperas.conditional("four") == "four"  # hyperas 0.4.0's: the value itself


@pytest.mark.parametrize(("kind", "args", "expected_type"), [
    ("quniform", (8, 128, 4), int),
    ("quniform", (0.1, 0.9, 0.1), float),
    ("qloguniform", (0, 5, 2), int),
    ("randint", (3, 9), int),
    ("uniformint", (2, 6), int),
    ("uniform", (0, 1), float),
])
def test_sampled_types(kind, args, expected_type):
    values = samples(Distribution.create(kind, *args))
    assert all(type(v) is expected_type for v in values), values[:5]


def test_integer_quniform_stays_on_its_grid():
    d = Distribution.create("quniform", 8, 128, 4)
    assert d.grid == list(range(8, 129, 4))
    assert set(samples(d, 200)) <= set(d.grid)


def test_choice_samples_real_values():
    d = Distribution.create("choice", ["relu", "tanh"])
    assert set(samples(d)) == {"relu", "tanh"}


def test_pchoice_checks_probabilities():
    assert Distribution.create("pchoice", [(0.2, "a"), (0.8, "b")]).grid == ["a", "b"]
    with pytest.raises(DistributionError, match="sum to 1"):
        Distribution.create("pchoice", [(0.2, "a"), (0.2, "b")])


def test_continuous_and_unbounded_have_no_grid():
    for kind, args in [("uniform", (0, 1)), ("normal", (0, 1)), ("qnormal", (0, 1, 1)),
                       ("lognormal", (0, 1)), ("loguniform", (-3, 0))]:
        assert Distribution.create(kind, *args).grid is None


@pytest.mark.parametrize(("kind", "args", "message"), [
    ("uniform", (1, 0), "low must be below high"),
    ("uniform", ("a", 1), "low must be a number"),
    ("normal", (0, -1), "sigma must be positive"),
    ("randint", (1.5,), "whole number"),
    ("choice", ("abc",), "options must be a list"),
    ("quniform", (0, 1), "missing a required argument: 'q'"),
])
def test_bad_arguments(kind, args, message):
    with pytest.raises(DistributionError, match=message):
        Distribution.create(kind, *args)


def test_same_expression_as_hyperopt():
    ours = Distribution.create("loguniform", -5, 0).to_hyperopt("lr")
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert stochastic.sample(ours, rng=rng1) == stochastic.sample(hp.loguniform("lr", -5, 0), rng=rng2)


def test_numpy_numbers_read_as_plain_numbers():
    """``tuning space`` and space.json show what the recipe means, not numpy's repr."""
    assert Distribution.create("loguniform", np.log(1e-5), np.float64(-2)).describe() == \
        f"loguniform({math.log(1e-5)!r}, -2.0)"
    assert Distribution.create("choice", [np.int64(8), 16]).describe() == "choice([8, 16])"
