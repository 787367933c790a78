"""tuning.tpe.TPE proposes what hyperopt's tpe.suggest proposes, for the same seed and trials."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, base, fmin, hp, space_eval, tpe
from hyperopt.pyll import scope
from scipy.special import erf

import tuning.tpe
from tuning.objective import Objective
from tuning.settings import StudyConfig
from tuning.study import _search
from tuning.tpe import (
    _ERF_IS_ONE,
    _EXP32_ERROR,
    TPE,
    _best_losses,
    _Estimate,
    _estimated_logsum_rows,
    _flat_mixture_lpdf,
    _mixture_lpdf,
    _order_extended,
    _Sorted,
    tuning_adaptive_parzen_normal,
    tuning_broadcast_best,
    tuning_log,
)
from tuning.trial import TrialOptions

# Every kind of marker a recipe can hold, a conditional branch among them.
SPACE = {
    "units": scope.int(hp.quniform("units", 8, 64, 4)),
    "lr": hp.loguniform("lr", np.log(1e-4), np.log(1e-1)),
    "batch": hp.qloguniform("batch", np.log(8), np.log(256), 8),
    "dropout": hp.uniform("dropout", 0, 0.5),
    "activation": hp.choice("activation", ["relu", "tanh", "elu"]),
    "layers": hp.randint("layers", 1, 4),
    "noise": hp.normal("noise", 0, 1),
    "optimizer": hp.choice("optimizer", [
        {"name": "sgd", "momentum": hp.uniform("momentum", 0, 0.9),
         "nesterov": hp.choice("nesterov", [False, True])},
        {"name": "adam", "decay": hp.qnormal("decay", 0, 1, 0.25)},
    ]),
}


def loss(point: dict) -> dict:
    """A landscape with ties (quantized terms) and failed trials, as real studies have."""
    if point["activation"] == "elu" and point["dropout"] > 0.4:
        return {"status": STATUS_FAIL}
    value = ((point["dropout"] - 0.2) ** 2 + abs(np.log10(point["lr"]) + 2.5) + point["units"] / 100
             + point["batch"] / 1000 + point["layers"] / 10 + (point["optimizer"]["name"] == "sgd") * 0.1)
    return {"loss": round(float(value), 2), "status": STATUS_OK}


def proposals(trials: Trials) -> list[dict]:
    return [doc["misc"]["vals"] for doc in trials.trials]


@pytest.fixture(params=["shortcuts past 1,000 components", "shortcuts always"])
def shortcuts(request, monkeypatch):
    """Large mixtures' shortcuts (float32 estimates, runs of equal components) where tuning
    takes them, or everywhere: every proposal then goes through the choice between
    estimates and exact scores."""
    if request.param == "shortcuts always":
        monkeypatch.setattr(tuning.tpe, "_LARGE_MIXTURE", 0)


def test_a_search_proposes_what_hyperopt_proposes(shortcuts):
    ours, theirs = Trials(), Trials()
    fmin(loss, SPACE, algo=TPE(), max_evals=300, trials=ours, rstate=np.random.default_rng(7),
         show_progressbar=False)
    fmin(loss, SPACE, algo=tpe.suggest, max_evals=300, trials=theirs, rstate=np.random.default_rng(7),
         show_progressbar=False)
    assert STATUS_FAIL in {doc["result"]["status"] for doc in theirs.trials}
    assert proposals(ours) == proposals(theirs)
    assert ours.losses() == theirs.losses()


def test_proposals_match_while_trials_run_and_after_documents_are_rewritten(shortcuts):
    """As the Spark dispatcher uses it: proposals made while earlier trials still run (their loss
    unknown), trials finishing out of order, and documents hyperopt's way of reading handles
    differently (several per trial id, ids out of order) mid-study."""
    domain = base.Domain(loss, SPACE)
    trials, fast, rng = Trials(), TPE(n_startup_jobs=10), np.random.default_rng(3)
    running: list[dict] = []
    for step in range(120):
        seed = int(rng.integers(2**31 - 1))
        ids = trials.new_trial_ids(1)
        expected = tpe.suggest(ids, domain, trials, seed, n_startup_jobs=10)
        docs = fast(ids, domain, trials, seed)
        assert docs[0]["misc"]["vals"] == expected[0]["misc"]["vals"], f"step {step}"
        if step == 60:  # a second document for an earlier trial, as hyperopt's from_tid allows
            docs[0]["misc"]["from_tid"] = 5
        docs[0]["state"] = base.JOB_STATE_RUNNING
        trials.insert_trial_docs(docs)
        trials.refresh()
        running.append(trials.trials[-1])
        if len(running) > 3 or step % 7 == 0:  # finish the middle one: not in proposal order
            doc = running.pop(len(running) // 2)
            doc["result"] = loss(space_eval(SPACE, base.spec_from_misc(doc["misc"])))
            doc["state"] = base.JOB_STATE_DONE
    assert len(trials.trials) == 120


@pytest.mark.parametrize("algo", ["tpe", tpe.suggest, functools.partial(tpe.suggest, n_startup_jobs=5)])
def test_studies_use_it_for_hyperopt_tpe_with_its_settings(algo):
    config = StudyConfig(experiment=None, max_evals=10, algo=algo,
                         trial=TrialOptions(Objective.create(), seed=1))
    suggest, _ = _search(None, {}, config)  # type: ignore[arg-type] (no recipe: no grid)
    assert isinstance(suggest, TPE)
    assert suggest.n_startup_jobs == (5 if isinstance(algo, functools.partial) else 20)


@pytest.mark.parametrize("log_scale", [False, True], ids=["GMM1_lpdf", "LGMM1_lpdf"])
@pytest.mark.parametrize("q", [None, 0.5, 4.0])
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("floored", [False, True], ids=["spread", "floored"])
def test_mixture_scores_are_hyperopts_bit_for_bit(log_scale, q, bounded, floored):
    """The in-place twins of hyperopt's mixture densities, on mixtures from 1 to 3,000
    components, some with sigmas below hyperopt's EPS, or most at one sigma, 1 or 24 samples."""
    original = tpe.LGMM1_lpdf if log_scale else tpe.GMM1_lpdf
    rng = np.random.default_rng(11)
    for components in (1, 2, 30, 3000):
        for samples in (1, 24):
            low, high = (-9.0, -2.0) if log_scale else (8.0, 64.0)
            mus = rng.uniform(low, high, components)
            points = np.exp(rng.uniform(low, high, samples)) if log_scale else rng.uniform(low, high, samples)
            if q is not None:
                points = np.round(points / q) * q
            sigmas = rng.uniform(0.01, 10, components) * rng.choice([1e-13, 1.0, 1.0], components)
            if floored:  # as adaptive_parzen_normal leaves most of them in a long study
                sigmas[rng.uniform(size=components) < 0.9] = 0.07
                if q is not None:  # observations of a quantized parameter: its values, in order
                    mus = np.sort(np.round(mus / q) * q)
            weights = rng.uniform(0, 1, components)
            weights /= weights.sum()
            args = (points, weights, mus, sigmas, *((low, high) if bounded else (None, None)), q)
            with np.errstate(all="ignore"):
                expected, got = original(*args), _mixture_lpdf(*args, log_scale)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert np.array_equal(got, expected, equal_nan=True), (components, samples)


def test_erf_is_plus_or_minus_one_wherever_the_twins_skip_it():
    """The twins leave erf uncomputed for |z| >= _ERF_IS_ONE, as exactly ±1: scipy's erf must agree."""
    far = np.concatenate([np.linspace(_ERF_IS_ONE, 60, 2_000_001), np.geomspace(60, 1e308, 10_001), [np.inf]])
    assert np.all(erf(far) == 1.0) and np.all(erf(-far) == -1.0)


def test_float32_exp_is_within_the_error_the_estimates_allow_it():
    """numpy's float32 exp within 3 ulp (it documents 2.52; here 1.7) of the 4 the estimates
    allow, on every float32 exponent from -87 (below it, float32 loses precision: the
    estimate counts those terms at their largest) to 0 in steps of 2**-16, and on a dense
    grid of the smallest ones."""
    exponents = np.concatenate([np.arange(-87 * 2**16, 1) / 2**16,
                                -np.geomspace(1e-30, 1e-3, 100_000)]).astype(np.float32)
    exact = np.exp(exponents.astype(np.float64))
    relative = np.abs(np.exp(exponents).astype(np.float64) - exact) / exact
    assert relative.max() <= _EXP32_ERROR * 3 / 4


def test_estimated_densities_are_within_their_error_and_exact_where_asked():
    rng = np.random.default_rng(13)
    for components in (1, 2, 1000, 10_000):
        for scale in (1e-3, 1.0, 30.0, 1e4, 1e300):  # terms near 1 to terms float32 takes to 0
            scores = -rng.exponential(scale, (24, components)) + rng.normal(0, 50, (24, 1))
            expected = tpe.logsum_rows(scores)
            estimate = _estimated_logsum_rows(scores.copy())
            assert np.all(np.abs(estimate.values - expected) <= estimate.error), (components, scale)
            assert np.all(estimate.error < 1e-5 * (1 + np.abs(expected)))
            rows = np.sort(rng.choice(24, 3, replace=False))
            assert np.array_equal(estimate.exact(rows), expected[rows])


def test_estimates_hold_when_every_exponent_rounds_to_float32_the_same_way():
    """The worst case for rounding the exponents to float32: each just under half a float32
    ulp from its float32, all rounding up (every term too large), many near -1 (where a
    term's error, exp(x) |x| ulp / 2, is largest) and a spread down to the clamp. The bound
    holds, and what it allows beyond float32's exp covers the rounding alone."""
    rng = np.random.default_rng(17)
    for components in (2, 1000, 10_000):
        for spread in (1.0, 5.0, 100.0):
            grid = -rng.exponential(spread, (24, components)).astype(np.float32)
            grid[:, 0] = 0
            scores = grid + 0.4999 * np.spacing(grid).astype(np.float64)  # (spacing < 0 below 0)
            offsets = rng.normal(0, 50, (24, 1))
            expected = tpe.logsum_rows(scores + offsets)
            estimate = _estimated_logsum_rows(scores + offsets)
            assert np.all(np.abs(estimate.values - expected) <= estimate.error), (components, spread)
            rounded = np.exp(np.maximum(grid, -87).astype(np.float64)).sum(axis=1)  # exact exps
            rounding = np.abs(np.log(rounded) - np.log(np.exp(scores).sum(axis=1)))
            assert np.all(rounding <= estimate.error - _EXP32_ERROR * 1.02), (components, spread)


@pytest.mark.parametrize("log_scale", [False, True], ids=["GMM1_lpdf", "LGMM1_lpdf"])
@pytest.mark.parametrize("bounded", [False, True])
def test_estimated_quantized_densities_are_within_their_error_and_exact_where_asked(log_scale, bounded):
    """A quantized parameter's large mixtures as a long study leaves them (means on the
    grid, most sigmas at the floor, in order), and some spread: the estimate from runs of
    equal components is within its error of hyperopt's, and hyperopt's own where asked."""
    original = tpe.LGMM1_lpdf if log_scale else tpe.GMM1_lpdf
    rng = np.random.default_rng(19)
    q, (low, high) = (8.0, (np.log(8), np.log(256))) if log_scale else (4.0, (8.0, 64.0))
    for components in (1, 1000, 10_000):
        for runs in (1, 40, components):
            grid = np.exp(rng.uniform(low, high, runs)) if log_scale else rng.uniform(low, high, runs)
            grid = np.round(grid / q) * q
            mus = np.sort(np.log(grid) if log_scale else grid)[np.sort(rng.integers(0, runs, components))]
            floor = (high - low) / 100  # adaptive_parzen_normal's, and its prior component
            sigmas = np.where(rng.random(components) < 0.999, floor, rng.uniform(floor, 3, components))
            at = np.searchsorted(mus, (low + high) / 2)
            mus, sigmas = np.insert(mus, at, (low + high) / 2), np.insert(sigmas, at, high - low)
            weights = rng.uniform(0.1, 1, components + 1)
            weights /= weights.sum()
            wider = 0 if bounded else (high - low) / 4  # (outside the bounds, hyperopt's mass is negative)
            points = rng.uniform(low - wider, high + wider, 24)
            points = np.exp(points) if log_scale else points
            points = np.round(points / q) * q
            bounds = (low, high) if bounded else (None, None)
            with np.errstate(all="ignore"):
                expected = original(points, weights, mus, sigmas, *bounds, q)
                estimate = _flat_mixture_lpdf(points, weights, mus, sigmas, *bounds, q, log_scale,
                                              estimate=True)
                off = np.abs(estimate.values - expected)
            assert np.all((estimate.values == expected) | (off <= estimate.error)), (components, runs)
            assert np.all(np.isfinite(estimate.error)), (components, runs)  # none left to hyperopt's way
            rows = np.sort(rng.choice(24, 5, replace=False))
            assert np.array_equal(estimate.exact(rows), expected[rows], equal_nan=True)


def test_the_best_sample_is_hyperopts_when_estimates_are_too_close_to_tell():
    """Candidates whose scores are closer than the estimates' error (equal ones among them)
    are decided on hyperopt's own densities, and equals go to the first, as np.argmax does."""
    samples = np.asarray([0.1, 0.2, 0.3, 0.4])
    below = np.asarray([-1.0, -0.5, -0.5, -2.0])
    above = np.asarray([0.0, 0.0, 0.0, 0.0])
    for truth, estimated in ((above, above + 1e-6), (above + [0, 1e-12, 0, 0], above),
                             (above + [0, 0, -1e-9, 0], above + [0, 0, 1e-8, 0])):
        asked: list = []

        def exact(rows, truth=truth, asked=asked):
            asked.append(rows)
            return truth[rows]

        estimate = _Estimate(estimated, 1e-6, exact)
        expected = tpe.broadcast_best(samples, below, truth)
        assert tuning_broadcast_best(samples, below, estimate) == expected
        assert [list(rows) for rows in asked] == [[1, 2]]  # only the two that could be best
    far = _Estimate(above, 1e-6, lambda rows: pytest.fail("decided on the estimates"))
    assert tuning_broadcast_best(samples, below + [0, 0, 1, 0], far) == [0.3] * 4
    # Equal samples (a quantized parameter's candidates repeat) need no exact densities.
    repeated = np.asarray([40.0, 36.0, 40.0, 36.0])
    assert tuning_broadcast_best(repeated, np.asarray([-1.0, -0.5, -1.0, -0.5]), far) == [36.0] * 4


def test_the_best_losses_are_the_ones_argsort_picks():
    """The split's set of best losses, partitioned rather than sorted when no tie crosses the cut."""
    rng = np.random.default_rng(3)
    for losses in (rng.uniform(-1, 0, 60), rng.integers(0, 4, 60).astype(float),
                   np.where(rng.uniform(size=60) < 0.3, np.inf, rng.uniform(size=60)),
                   np.where(rng.uniform(size=60) < 0.3, np.nan, rng.integers(0, 9, 60))):
        for n_below in range(len(losses) + 1):
            expected = np.zeros(len(losses), dtype=bool)
            expected[np.argsort(losses)[:n_below]] = True
            assert np.array_equal(_best_losses(losses.copy(), n_below), expected), (losses, n_below)


def test_observations_carry_their_order_while_no_two_are_equal():
    algo, trials = TPE(), Trials()
    fmin(loss, SPACE, algo=algo, max_evals=60, trials=trials, rstate=np.random.default_rng(7),
         show_progressbar=False)
    _, _, _, vals = algo._observations.read(trials)
    for label in ("dropout", "noise", "momentum"):  # continuous: every value distinct
        assert np.array_equal(vals[label].order, np.argsort(np.asarray(vals[label])))
    for label in ("units", "activation"):  # values repeat: numpy's own sort decides among equals
        assert getattr(vals[label], "order", None) is None
    logs = tuning_log(vals["lr"])  # what a loguniform parameter's estimator is given
    assert np.array_equal(logs, np.log(np.asarray(vals["lr"])))
    assert np.array_equal(logs.order, np.argsort(np.asarray(logs)))


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct", "repeated"])
def test_the_parzen_estimator_is_hyperopts_with_or_without_an_order_carried(distinct):
    rng = np.random.default_rng(5)
    for size in (0, 1, 2, 25, 26, 2000):
        mus = rng.uniform(-3, 3, size) if distinct else rng.integers(0, 5, size).astype(float)
        order = np.zeros(0, np.intp)
        for known in range(size):  # as observations arrive, one a proposal
            order = _order_extended(order, mus[:known + 1], known)
        assert order is not None if distinct else (order is None or size < 25)
        got = tuning_adaptive_parzen_normal(_Sorted.of(mus, order), 1.0, 0.0, 6.0)
        expected = tpe.adaptive_parzen_normal(mus, 1.0, 0.0, 6.0)
        for ours, theirs in zip(got, expected, strict=True):
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), size
