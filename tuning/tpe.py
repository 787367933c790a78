"""hyperopt's TPE with a per-proposal cost that does not grow with the Python loops over every trial.

``hyperopt.tpe.suggest`` rebuilds everything it reads from the whole ``Trials`` on each call:
the best document per trial, the losses, every parameter's observations (three Python loops
over all documents), then splits each parameter's observations with a Python set test per
observation and scores quantized parameters with a Python loop over every mixture component.
At 10,000 trials that is ~0.3 s per proposal, most of it those loops.

:class:`TPE` proposes exactly what ``tpe.suggest`` proposes for the same seed and trials (the
same posterior graph, the same random draws, the same floating-point sums where they decide), but

* keeps the observations incrementally: each call reads only the documents added since the
  last one and those whose result could still change (new or running ones);
* builds the posterior graph once per search space;
* evaluates that graph with vectorized twins of hyperopt's ``ap_split_trials``,
  ``GMM1_lpdf`` and ``LGMM1_lpdf``, which do the same floating-point operations in the same
  order (adding mixture components one after another with ``cumsum`` where hyperopt loops
  over them), so the scores are bit for bit hyperopt's; but in place, in one or two buffers
  per call: at 10,000 trials hyperopt's own spend most of their time allocating
  (24 candidates × 10,000 components, 2 MB per temporary array, a dozen per call);
* keeps, per parameter whose observed values are all distinct, their sorted order as trials
  arrive, and hands it through the split (and the log of a loguniform parameter) to
  ``adaptive_parzen_normal``, which would otherwise sort them again for each proposal: for
  distinct values the sorted order is the one permutation ``argsort`` can return. Values
  that repeat (quantized, choices) are sorted by numpy, whose order among equals the weights
  depend on;
* computes what many components share once for all of them: past a few hundred trials most
  of a parameter's components sit at ``adaptive_parzen_normal``'s smallest sigma (the log
  normalizer of a log-normal component depends on the sample and that sigma only), and a
  quantized parameter's observations repeat (its components' cdfs, once per run of equals);
* estimates a large mixture's log-density at each candidate, to within a bound on the
  error: with float32 exponentials (a float64 exp is libm's, one value at a time, on CPUs
  without AVX-512), or for a quantized parameter from its runs of equal components
  (43 sums of cdfs instead of 9,976); and picks the best candidate on the estimates when no
  two different ones are closer than their errors; when some are, it computes hyperopt's
  own scores for those.

Example::

    from hyperopt import fmin, hp
    from tuning.tpe import TPE

    fmin(lambda x: (x - 1) ** 2, hp.uniform("x", -5, 5), algo=TPE(), max_evals=50)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hyperopt import base, pyll, rand
from hyperopt import tpe as hyperopt_tpe
from hyperopt.pyll import scope
from hyperopt.tpe import DEFAULT_LF, EPS
from scipy.special import erf

__all__ = ["TPE"]

_FINAL_STATES = (base.JOB_STATE_DONE, base.JOB_STATE_ERROR)


class TPE:
    """A ``suggest`` function for ``fmin`` (or :func:`tuning.loop.run_trials`) with
    ``tpe.suggest``'s settings and defaults (``verbose`` is accepted and ignored: nothing is
    logged). One instance follows one ``Trials`` and one space; given another, it starts over.
    """

    def __init__(self, prior_weight: float = hyperopt_tpe._default_prior_weight,
                 n_startup_jobs: int = hyperopt_tpe._default_n_startup_jobs,
                 n_EI_candidates: int = hyperopt_tpe._default_n_EI_candidates,  # noqa: N803 (hyperopt's name)
                 gamma: float = hyperopt_tpe._default_gamma, verbose: bool = True) -> None:
        self.prior_weight, self.n_startup_jobs = prior_weight, n_startup_jobs
        self.n_EI_candidates, self.gamma = n_EI_candidates, gamma
        self._graph: tuple[Any, tuple[Any, ...]] | None = None
        self._observations: _Observations | None = None

    def __repr__(self) -> str:
        return (f"TPE(prior_weight={self.prior_weight}, n_startup_jobs={self.n_startup_jobs}, "
                f"n_EI_candidates={self.n_EI_candidates}, gamma={self.gamma})")

    def __call__(self, new_ids: list[int], domain: base.Domain, trials: base.Trials,
                 seed: int) -> list[dict[str, Any]]:
        observations = self._observations_of(domain, trials)
        tids, losses, idxs, vals = observations.read(trials)
        if len(tids) < self.n_startup_jobs:
            return rand.suggest(new_ids, domain, trials, seed)  # seeds its RNG from new_ids, as TPE does

        posterior, inputs = self._posterior(domain)
        first_new_id = new_ids[0]
        fake_id_0 = max(int(tids[-1]), first_new_id) + 2 if len(tids) else first_new_id + 2
        fake_ids = list(range(fake_id_0, fake_id_0 + self.n_EI_candidates))
        memo = {domain.s_new_ids: fake_ids, domain.s_rng: np.random.default_rng(seed),
                **dict(zip(inputs, (idxs, vals, tids, losses), strict=True))}
        idxs_out, vals_out = pyll.rec_eval(posterior, memo=memo, print_node_on_error=False)

        for label, param in domain.params.items():  # hyperopt's offset for randint(low, high)
            if param.name == "randint" and len(param.pos_args) == 2:
                offset = param.pos_args[0].obj
                vals_out[label] = [val + offset for val in vals_out[label]]
        miscs = [{"tid": first_new_id, "cmd": domain.cmd, "workdir": domain.workdir}]
        base.miscs_update_idxs_vals(miscs, idxs_out, vals_out, idxs_map={fake_ids[0]: first_new_id},
                                    assert_all_vals_used=False)
        return trials.new_trial_docs([first_new_id], [None], [domain.new_result()], miscs)

    def _observations_of(self, domain: base.Domain, trials: base.Trials) -> _Observations:
        if self._observations is None or not self._observations.follows(domain, trials):
            self._observations = _Observations(domain, trials)
            self._graph = None
        return self._observations

    def _posterior(self, domain: base.Domain) -> tuple[Any, tuple[Any, ...]]:
        """hyperopt's posterior graph for the space, built once, and its four input nodes:
        the observations' ids and values, and the losses' ids and values."""
        if self._graph is None:
            observed, observed_loss, posterior = hyperopt_tpe.build_posterior_wrapper(
                domain, self.prior_weight, self.gamma)
            # The same graph, evaluated by the vectorized twins of its slow nodes.
            for node in pyll.dfs(pyll.as_apply(posterior)):
                node.name = _FAST.get(node.name, node.name)
            self._graph = posterior, (observed["idxs"], observed["vals"],
                                      observed_loss["idxs"], observed_loss["vals"])
        return self._graph


class _Observations:
    """What TPE reads from the trials, in hyperopt's order: per trial id (ascending) the loss of
    its best document (``inf`` until it has one) and that document's values per parameter, as
    the arrays hyperopt's graph makes of its lists (same values, same dtypes)."""

    def __init__(self, domain: base.Domain, trials: base.Trials) -> None:
        self.domain, self.trials = domain, trials
        self.labels = list(domain.params)
        self._reset()

    def follows(self, domain: base.Domain, trials: base.Trials) -> bool:
        return domain is self.domain and trials is self.trials

    def _reset(self) -> None:
        self.read_docs = 0            # how many of trials.trials have been read
        self.last_doc: Any = None     # the last one read: if it moved, the list was rebuilt
        self.tids = np.asarray([])
        self.losses = np.asarray([])
        self.idxs = {label: np.asarray([]) for label in self.labels}
        self.vals = {label: np.asarray([]) for label in self.labels}
        # per label, the order of its values while they are all distinct (see _Sorted)
        self.orders: dict[str, np.ndarray | None] = {label: np.zeros(0, np.intp) for label in self.labels}
        self.open: dict[int, dict[str, Any]] = {}  # position -> its document, while its loss may change

    def read(self, trials: base.Trials) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        """Trial ids, losses, and per label the ids and values that use it (arrays; lists
        when hyperopt's own reading was used)."""
        docs = trials.trials
        if len(docs) < self.read_docs or (self.read_docs and docs[self.read_docs - 1] is not self.last_doc):
            self._reset()  # documents were removed or replaced: read them all again
        fresh = docs[self.read_docs:]
        if any("from_tid" in doc["misc"] for doc in fresh) or (
                fresh and self.tids.size and min(doc["tid"] for doc in fresh) <= self.tids[-1]):
            self._reset()  # several documents per trial, or ids out of order (rare): hyperopt's way
            return _read_all(docs, self.labels)
        if self.open:
            self.losses = self.losses.copy()  # the graph may still hold the last call's array
            for position, doc in list(self.open.items()):
                self.losses[position] = _loss(doc)
                if doc["state"] in _FINAL_STATES:
                    del self.open[position]
        if fresh:
            self.open.update((len(self.tids) + i, doc) for i, doc in enumerate(fresh)
                             if doc["state"] not in _FINAL_STATES)
            self.tids = _extend(self.tids, [doc["tid"] for doc in fresh])
            self.losses = _extend(self.losses, [_loss(doc) for doc in fresh])
            for label in self.labels:
                known = len(self.vals[label])
                for column, key in ((self.idxs, "idxs"), (self.vals, "vals")):
                    column[label] = _extend(column[label], [x for d in fresh for x in d["misc"][key][label]])
                self.orders[label] = _order_extended(self.orders[label], self.vals[label], known)
            self.read_docs, self.last_doc = len(docs), docs[-1]
        return self.tids, self.losses, dict(self.idxs), {
            label: _Sorted.of(values, self.orders[label]) for label, values in self.vals.items()}


def _extend(array: np.ndarray, items: list[Any]) -> np.ndarray:
    """``np.asarray(old_items + items)``, without converting the old items again."""
    if not items:
        return array
    return np.asarray(items) if array.size == 0 else np.concatenate([array, np.asarray(items)])


class _Sorted(np.ndarray):
    """Values that carry the permutation sorting them (``order``), while no two are equal:
    then it is the one permutation ``np.argsort`` can return. Arrays made from one (a slice,
    ``np.log`` of it) carry none."""

    order: np.ndarray | None = None

    @classmethod
    def of(cls, values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
        if order is None:
            return values
        carrier = values.view(cls)
        carrier.order = order
        return carrier

    def __array_finalize__(self, obj: Any) -> None:
        self.order = None


def _order_extended(order: np.ndarray | None, values: np.ndarray, known: int) -> np.ndarray | None:
    """The order of ``values`` from that of its first ``known`` ones (None: two are equal,
    and stay so). A trial or two arrive per call: inserting them costs a few passes over
    the array, where sorting it anew (hyperopt's ``argsort`` per parameter per proposal)
    was 0.4-0.7 ms at 10,000 trials."""
    if order is None or values.dtype.kind != "f":
        return None
    new = np.arange(known, len(values))
    new = new[np.argsort(values[new])]
    order = np.insert(order, np.searchsorted(values[order], values[new]), new)
    return order if _strictly_increasing(values[order]) else None


def _strictly_increasing(values: np.ndarray) -> bool:
    """No two equal, each above the last (NaN compares unequal: False)."""
    return bool(np.all(values[1:] > values[:-1]))


def _read_all(docs: list[dict[str, Any]], labels: list[str]) -> tuple[
        list[int], list[float], dict[str, list[Any]], dict[str, list[Any]]]:
    """hyperopt's own reading of the trials (``tpe.suggest``), for the cases the incremental one
    does not follow."""
    best_docs: dict[int, dict[str, Any]] = {}
    best_loss: dict[int, float] = {}
    for doc in docs:
        tid = doc["misc"].get("from_tid", doc["tid"])
        loss = _loss(doc)
        best_loss.setdefault(tid, loss)
        if loss <= best_loss[tid]:
            best_loss[tid], best_docs[tid] = loss, doc
    tids = sorted(best_docs)
    idxs, vals = base.miscs_to_idxs_vals([best_docs[t]["misc"] for t in tids], keys=labels)
    return tids, [best_loss[t] for t in tids], idxs, vals


def _loss(doc: dict[str, Any]) -> float:
    loss = doc["result"].get("loss")
    return float("inf") if loss is None else float(loss)


# -- Vectorized twins of hyperopt's hot graph nodes. Each returns what the original returns,
#    bit for bit; only the Python loops are gone.

@scope.define_info(o_len=2)
def tuning_ap_split_trials(o_idxs: Any, o_vals: Any, l_idxs: Any, l_vals: Any, gamma: float,
                           gamma_cap: int = DEFAULT_LF) -> tuple[np.ndarray, np.ndarray]:
    """``tpe.ap_split_trials`` with masks and ``np.isin`` for its per-observation set tests;
    the values above carry their order when the observations do (see :class:`_Sorted`)."""
    order = getattr(o_vals, "order", None)
    o_idxs, o_vals, l_idxs = map(np.asarray, [o_idxs, o_vals, l_idxs])
    n_below = min(int(np.ceil(gamma * np.sqrt(len(l_vals)))), gamma_cap)
    is_below = _best_losses(l_vals, n_below)
    if np.array_equal(o_idxs, l_idxs):  # every trial has this parameter (trial ids are unique)
        in_below, in_above = is_below, ~is_below
    else:
        in_below, in_above = np.isin(o_idxs, l_idxs[is_below]), np.isin(o_idxs, l_idxs[~is_below])
    below, above = o_vals[in_below], o_vals[in_above]
    if order is not None and above.size:  # each observation above, in order, by its place among them
        above = _Sorted.of(above, (np.cumsum(in_above) - 1)[order[in_above[order]]])
    # hyperopt builds these from Python lists: an empty one is float64 whatever the values were.
    return (below if below.size else np.asarray([])), (above if above.size else np.asarray([]))


_last_best: tuple[Any, int, np.ndarray] | None = None


def _best_losses(losses: Any, n_below: int) -> np.ndarray:
    """Which losses are the ``n_below`` that ``np.argsort(losses)[:n_below]`` picks (only the
    set matters to the split), once per proposal rather than once per parameter: every
    parameter's split gets the same losses array (a new one whenever a loss changes)."""
    global _last_best
    if _last_best is None or _last_best[0] is not losses or _last_best[1] != n_below:
        values = np.asarray(losses)
        best = np.zeros(len(values), dtype=bool)
        if 0 < n_below < len(values):
            part = np.argpartition(values, n_below)  # the n_below smallest first, then the next one
            if values[part[:n_below]].max() < values[part[n_below]]:  # no tie across the cut (nor NaN):
                best[part[:n_below]] = True                        # the set is argsort's, a tenth the work
        if not best.any():
            best[np.argsort(values)[:n_below]] = True
        _last_best = losses, n_below, best
    return _last_best[2]


@scope.define_info(o_len=3)
def tuning_adaptive_parzen_normal(mus: Any, prior_weight: float, prior_mu: float, prior_sigma: float,
                                  LF: int = DEFAULT_LF) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: N803
    """``tpe.adaptive_parzen_normal``, taking the order of ``mus`` from them when they carry
    it (:class:`_Sorted`) instead of sorting them again; the same operations from there on."""
    order = getattr(mus, "order", None)
    mus = np.array(mus)
    if order is None or len(mus) < 2:
        return hyperopt_tpe.adaptive_parzen_normal(mus, prior_weight, prior_mu, prior_sigma, LF)
    prior_pos = int(np.searchsorted(mus[order], prior_mu))  # the prior among the sorted mus
    srtd_mus = np.zeros(len(mus) + 1)
    srtd_mus[:prior_pos] = mus[order[:prior_pos]]
    srtd_mus[prior_pos] = prior_mu
    srtd_mus[prior_pos + 1:] = mus[order[prior_pos:]]
    sigma = np.zeros_like(srtd_mus)
    sigma[1:-1] = np.maximum(srtd_mus[1:-1] - srtd_mus[0:-2], srtd_mus[2:] - srtd_mus[1:-1])
    sigma[0] = srtd_mus[1] - srtd_mus[0]
    sigma[-1] = srtd_mus[-1] - srtd_mus[-2]
    if LF and LF < len(mus):
        unsrtd_weights = hyperopt_tpe.linear_forgetting_weights(len(mus), LF)
        srtd_weights = np.zeros_like(srtd_mus)
        srtd_weights[:prior_pos] = unsrtd_weights[order[:prior_pos]]
        srtd_weights[prior_pos + 1:] = unsrtd_weights[order[prior_pos:]]
    else:
        srtd_weights = np.ones(len(srtd_mus))
    srtd_weights[prior_pos] = prior_weight
    # hyperopt's "magic formula"
    sigma = np.clip(sigma, prior_sigma / min(100.0, (1.0 + len(srtd_mus))), prior_sigma)
    sigma[prior_pos] = prior_sigma
    srtd_weights /= srtd_weights.sum()
    return srtd_weights, srtd_mus, sigma


@scope.define
def tuning_log(values: Any) -> Any:
    """pyll's ``log`` (``np.log``); the log of observations that carry their order carries it
    too, as long as no two logs are equal (a loguniform parameter's observations)."""
    logs = np.log(values)
    order = getattr(values, "order", None)
    if order is not None and _strictly_increasing(logs[order]):
        return _Sorted.of(np.asarray(logs), order)
    return logs


def _logsum_rows(scores: np.ndarray) -> np.ndarray:
    """``tpe.logsum_rows``, in ``scores``' own memory."""
    top = scores.max(axis=1)
    scores -= top[:, None]
    np.exp(scores, out=scores)
    return np.log(scores.sum(axis=1)) + top


# numpy documents its float32 exp to 2.52 ulp (libm's is under 1): 4 ulp, relative. A test
# holds numpy to 3.
_EXP32_ERROR = 2.0**-21
# Exponents are taken to float32 no lower than this: the exp of any above it is a normal
# float32 (no underflow, which numpy's float32 exp takes a slow path for); a term below it
# is counted as the exp of it, at most 2**-125 too much.
_LOWEST_EXPONENT = -87.0
_ROUNDING = 2.0**-24  # float32's relative rounding of a normal number (2**-150 absolute below)


def _estimated_logsum_rows(scores: np.ndarray) -> _Estimate:
    """``tpe.logsum_rows(scores)`` to within a bound, sooner on CPUs without AVX-512 (numpy's
    float64 exp there is libm's, one value at a time; its float32 exp is vectorized), and
    hyperopt's own for the rows asked.

    The exponents ``x`` are hyperopt's, bit for bit, all at most 0 (the largest is 0, so the
    sum ``S`` is at least 1). Each term is the float32 exp of ``x`` rounded to float32
    (clamped at ``_LOWEST_EXPONENT``), summed in float64. Its error, relative to ``S``:

    * float32's exp: ``_EXP32_ERROR``;
    * the rounding, ``|d| <= 2**-24 |x|``: ``exp(x) |d|`` a term, so ``2**-24`` times
      ``sum(exp(x) |x|) <= K S + n K exp(-K)`` for any ``K >= 1`` (the terms with ``|x| <= K``
      and the rest, as ``t exp(-t)`` falls from ``t = 1`` on), with ``K = ln(n / S)`` that
      is ``2 K S``;
    * the clamp, and the absolute rounding of exponents too small to be normal floats:
      ``2**-125`` a term;

    and the log of the sum is off by as much, absolute. No pass over the terms is spent on
    the bound: at 10,000 trials each pass is ~0.1 ms, as much as float32's exp saves."""
    top = scores.max(axis=1)
    scores -= top[:, None]
    count = scores.shape[1]
    # (exponents below float32's range become -inf, then the clamp; a NaN row gets a NaN
    # bound, and is decided on hyperopt's own densities)
    with np.errstate(over="ignore", invalid="ignore"):
        terms = scores.astype(np.float32)
        np.maximum(terms, _LOWEST_EXPONENT, out=terms)
        np.exp(terms, out=terms)
        sums = terms.sum(axis=1, dtype=np.float64)
        k = np.maximum(1.0, np.log(count / sums))
    relative = _EXP32_ERROR + _ROUNDING * 2 * k + count * 2.0**-125 / sums
    values = np.log(sums) + top
    # 1.02: the bound's second-order terms, the float64 sum's rounding (n 2**-53 at most) and the
    # log's own; 2**-40: the float64 ends' rounding.
    error = relative * 1.02 + 2.0**-40 * (1 + np.abs(values) + np.abs(top))

    def exact(rows: np.ndarray) -> np.ndarray:  # logsum_rows' own steps, on these rows alone
        return np.log(np.exp(scores[rows]).sum(axis=1)) + top[rows]

    return _Estimate(values, error, exact)


def _normal_scores(samples: np.ndarray, weights: np.ndarray, mus: np.ndarray, sigmas: np.ndarray,
                   p_accept: Any) -> np.ndarray:
    """The unquantized branch of ``GMM1_lpdf`` up to its ``logsum_rows``: the same
    operations, on one buffer (a sample a row, a component a column)."""
    scores = np.subtract(samples[:, None], mus)
    scores /= np.maximum(sigmas, EPS)
    np.square(scores, out=scores)
    scores *= -0.5
    scores += np.log(weights / np.sqrt(2 * np.pi * sigmas**2) / p_accept)
    return scores


def _lognormal_scores(samples: np.ndarray, weights: np.ndarray, mus: np.ndarray,
                      sigmas: np.ndarray) -> np.ndarray:
    """The unquantized branch of ``LGMM1_lpdf`` (``lognormal_lpdf`` per component) up to
    its ``logsum_rows``, on two buffers."""
    assert np.all(sigmas >= 0)
    sigmas = np.maximum(sigmas, EPS)
    x = samples[:, None]
    log_z = _log_normalizers(sigmas, x)
    scores = np.subtract(np.log(x), mus)
    scores /= sigmas
    np.square(scores, out=scores)
    scores *= 0.5
    np.negative(scores, out=scores)
    scores -= log_z
    scores += np.log(weights)
    return scores


def _log_normalizers(sigmas: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``log(sigma * x * sqrt(2 pi))`` per sample (rows) and component (columns), as
    ``lognormal_lpdf`` computes it; once per sample for all the components at the smallest
    sigma. Past a few hundred trials most sit at ``adaptive_parzen_normal``'s floor (its
    prior sigma / 100; all but 7 of 9,976 at 10,000 trials), and a log costs ~5 ns a value."""
    floor = sigmas.min()
    rest = np.flatnonzero(sigmas != floor)  # (all of them if one is NaN)
    if len(rest) > len(sigmas) // 2:
        log_z = np.multiply(sigmas, x)
        log_z *= np.sqrt(2 * np.pi)
        return np.log(log_z, out=log_z)
    log_z = np.empty((len(x), len(sigmas)))
    log_z[:] = np.log(floor * x * np.sqrt(2 * np.pi))
    log_z[:, rest] = np.log(sigmas[rest] * x * np.sqrt(2 * np.pi))
    return log_z


_ERF_IS_ONE = 6.0  # scipy's erf(z) is ±1.0 to the last bit from |z| = 5.93 on (a test holds it to that)


def _erf(z: np.ndarray) -> None:
    """``erf(z, out=z)`` for a flat ``z``, computing only the arguments whose erf is not ±1:
    most mixture components lie many sigmas from any one bound, and erf costs ~20 ns each."""
    near = np.flatnonzero(~(np.abs(z) >= _ERF_IS_ONE))  # (NaN is near: its erf is NaN)
    inner = erf(z[near])
    np.copysign(1.0, z, out=z)
    z[near] = inner


def _cdfs(bounds: np.ndarray, mus: np.ndarray, sigmas: np.ndarray, log_scale: bool) -> np.ndarray:
    """``normal_cdf`` (or ``lognormal_cdf``) of each component (rows) at each bound (columns)."""
    if log_scale:
        if bounds.min() < 0:
            raise ValueError("negative arg to lognormal_cdf", bounds)
        with np.errstate(divide="ignore"):
            bounds = np.log(np.maximum(bounds, EPS))
    cdfs = np.subtract(bounds[None, :], mus[:, None])
    cdfs /= np.maximum(np.sqrt(2) * sigmas, EPS)[:, None]
    _erf(cdfs.reshape(-1))
    if log_scale:  # 0.5 + 0.5 * erf(z)
        cdfs *= 0.5
        cdfs += 0.5
    else:  # 0.5 * (1 + erf(z))
        cdfs += 1
        cdfs *= 0.5
    return cdfs


def _run_starts(mus: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Where each run of equal components (mu and sigma) begins: a quantized parameter's
    observations repeat (they are its grid's values), and ``adaptive_parzen_normal`` gives
    them in order, most at one sigma (43 runs of 9,976 components at 10,000 trials)."""
    starts = np.ones(len(mus), dtype=bool)
    np.not_equal(mus[1:], mus[:-1], out=starts[1:])
    starts[1:] |= sigmas[1:] != sigmas[:-1]
    return starts


def _component_cdfs(bounds: np.ndarray, mus: np.ndarray, sigmas: np.ndarray, log_scale: bool) -> np.ndarray:
    """:func:`_cdfs`, computed once per run of equal components."""
    if len(mus) < _LARGE_MIXTURE:
        return _cdfs(bounds, mus, sigmas, log_scale)
    starts = _run_starts(mus, sigmas)
    first = np.flatnonzero(starts)
    if len(first) > len(mus) // 4:
        return _cdfs(bounds, mus, sigmas, log_scale)
    return _cdfs(bounds, mus[first], sigmas[first], log_scale)[np.cumsum(starts) - 1]


def _distinct_bounds(lbound: np.ndarray, ubound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct bounds, the columns of each distinct (lower, upper) pair among them
    (2 × pairs) and each sample's pair: quantized candidates repeat, and one value's upper
    bound is the next value's lower bound."""
    pairs, back = np.unique(np.stack([lbound, ubound]), axis=1, return_inverse=True)
    bounds, at = np.unique(pairs, return_inverse=True)
    return bounds, at.reshape(pairs.shape), back.reshape(-1)


def _quantized_mass(samples: np.ndarray, weights: np.ndarray, mus: np.ndarray, sigmas: np.ndarray,
                    lbound: np.ndarray, ubound: np.ndarray, log_scale: bool) -> np.ndarray:
    """Sum over components of ``w * cdf(ubound) - w * cdf(lbound)``, added component after
    component as hyperopt's loop does (``cumsum`` is sequential), once per distinct sample,
    with each distinct bound's cdf computed once."""
    if len(weights) == 0:
        return np.zeros(samples.shape, dtype="float64")
    bounds, at, back = _distinct_bounds(lbound, ubound)
    weighted = _component_cdfs(bounds, mus, sigmas, log_scale)
    weighted *= weights[:, None]
    increments = weighted[:, at[1]]
    increments -= weighted[:, at[0]]
    return np.cumsum(increments, axis=0)[-1][back]


def _estimated_log_mass(samples: np.ndarray, weights: np.ndarray, mus: np.ndarray, sigmas: np.ndarray,
                        lbound: np.ndarray, ubound: np.ndarray, log_scale: bool) -> _Estimate:
    """``log(_quantized_mass(...))`` to within a bound, from each run of equal components'
    cdfs (the same values, bit for bit) times the run's total weight: at 10,000 trials, 43
    runs instead of 9,976 components; and hyperopt's own for the samples asked.

    Both sums add terms of at most ``w (cdf(u) - cdf(l))`` plus three roundings of ``w``:
    hyperopt's, one a component in turn, is off from the real sum by at most
    ``(n + 3) 2**-53 W`` (``W`` the total weight); this one, runs' weights then a dot
    product over runs, by ``(n + R + 2) 2**-53 W``. A mass ``m`` off by ``E`` has a log
    off by at most ``E / (m - E)``."""
    starts = _run_starts(mus, sigmas)
    first = np.flatnonzero(starts)
    bounds, at, back = _distinct_bounds(lbound, ubound)
    cdfs = _cdfs(bounds, mus[first], sigmas[first], log_scale)
    masses = np.add.reduceat(weights, first) @ (cdfs[:, at[1]] - cdfs[:, at[0]])
    mass = masses[back]
    off = (2 * len(weights) + len(first) + 8) * 2.0**-53 * np.abs(weights).sum() * 1.01
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.log(mass)
        error = np.where(mass > 2 * off, off / (mass - off), np.inf) + 2.0**-52 * np.abs(values)

    def exact(rows: np.ndarray) -> np.ndarray:  # a sample's mass does not depend on the others
        return np.log(_quantized_mass(samples[rows], weights, mus, sigmas, lbound[rows], ubound[rows],
                                      log_scale))

    return _Estimate(values, error, exact)


@dataclass(frozen=True)
class _Estimate:
    """What a mixture-density node of the posterior graph hands its one reader,
    :func:`tuning_broadcast_best`: the samples' log-densities to within ``error`` of
    hyperopt's (0: they are hyperopt's), and ``exact(rows)``, hyperopt's own for those samples."""

    values: np.ndarray
    error: np.ndarray | float
    exact: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def of(cls, llik: Any) -> _Estimate:
        """``llik`` itself, or the exact estimate of hyperopt's own log-densities (a
        categorical parameter's node is hyperopt's)."""
        if isinstance(llik, cls):
            return llik
        values = np.asarray(llik)
        return cls(values, 0.0, values.__getitem__)

    def minus(self, shift: Any) -> _Estimate:
        """The estimate of ``exact - shift`` (its rounding, half an ulp of each side, added)."""
        values = self.values - shift
        error = self.error + 2.0**-52 * (np.abs(values) + np.abs(shift))
        return _Estimate(values, error, lambda rows: self.exact(rows) - shift)


def _fast_lpdf(original: Any, log_scale: bool) -> Any:
    """``original`` (``tpe.GMM1_lpdf`` or ``tpe.LGMM1_lpdf``), vectorized, registered with
    pyll as ``tuning_<name>``; an :class:`_Estimate` for a large mixture."""
    def lpdf(samples: Any, weights: Any, mus: Any, sigmas: Any, low: Any = None, high: Any = None,
             q: Any = None) -> np.ndarray | _Estimate:
        samples, weights, mus, sigmas = map(np.asarray, (samples, weights, mus, sigmas))
        if len(weights) < max(_LARGE_MIXTURE, 1) or samples.ndim != 1 or not samples.size:
            return _mixture_lpdf(samples, weights, mus, sigmas, low, high, q, log_scale)
        return _flat_mixture_lpdf(samples, weights, mus, sigmas, low, high, q, log_scale, estimate=True)

    lpdf.__name__ = lpdf.__qualname__ = f"tuning_{original.__name__}"
    return scope.define(lpdf)


# From this many components on, the float32 estimates and the search for runs of equal
# components pay for themselves (below it a float64 exp costs about what the float32 pass does).
_LARGE_MIXTURE = 1000


def _mixture_lpdf(samples: Any, weights: Any, mus: Any, sigmas: Any, low: Any, high: Any, q: Any,
                  log_scale: bool) -> np.ndarray:
    """``GMM1_lpdf`` (normal components) or, with ``log_scale``, ``LGMM1_lpdf`` (log-normal
    ones, bounds given as logs), as hyperopt computes them."""
    samples, weights, mus, sigmas = map(np.asarray, (samples, weights, mus, sigmas))
    if samples.size == 0:  # what each of hyperopt's two returns for no samples
        return np.zeros(samples.shape) if log_scale else np.asarray([])
    rval = _flat_mixture_lpdf(samples.flatten(), weights, mus, sigmas, low, high, q, log_scale)
    rval.shape = samples.shape
    return rval


def _flat_mixture_lpdf(samples: np.ndarray, weights: np.ndarray, mus: np.ndarray, sigmas: np.ndarray,
                       low: Any, high: Any, q: Any, log_scale: bool,
                       estimate: bool = False) -> Any:
    """The densities, or with ``estimate`` an :class:`_Estimate` of them."""
    logsum = _estimated_logsum_rows if estimate else _logsum_rows
    if q is None and log_scale:  # (LGMM1_lpdf computes p_accept here, and leaves it unused)
        return logsum(_lognormal_scores(samples, weights, mus, sigmas))
    if low is None and high is None:
        p_accept = 1
    else:  # hyperopt's normal_cdf at high less at low
        cdfs = _cdfs(np.asarray([low, high]), mus, sigmas, log_scale=False)
        p_accept = np.sum(weights * (cdfs[:, 1] - cdfs[:, 0]))
    if q is None:
        return logsum(_normal_scores(samples, weights, mus, sigmas, p_accept))
    if high is None:
        ubound = samples + q / 2
    else:
        ubound = np.minimum(samples + q / 2, np.exp(high) if log_scale else high)
    if low is None:
        lbound = samples - q / 2
    else:
        lbound = np.maximum(samples - q / 2, np.exp(low) if log_scale else low)
    if log_scale:
        lbound = np.maximum(0, lbound)
    if estimate:
        log_mass = _estimated_log_mass(samples, weights, mus, sigmas, lbound, ubound, log_scale)
        return log_mass.minus(np.log(p_accept))
    prob = _quantized_mass(samples, weights, mus, sigmas, lbound, ubound, log_scale)
    return np.log(prob) - np.log(p_accept)


@scope.define
def tuning_broadcast_best(samples: Any, below_llik: Any, above_llik: Any) -> list[Any]:
    """``tpe.broadcast_best``: every sample replaced by the one whose log-density below less
    above is highest (the first of equals). Decided on the estimates where their errors
    cannot change the answer, else on hyperopt's own densities of the samples that could be it."""
    if not isinstance(below_llik, _Estimate) and not isinstance(above_llik, _Estimate):
        return hyperopt_tpe.broadcast_best(samples, below_llik, above_llik)
    below_llik, above_llik = _Estimate.of(below_llik), _Estimate.of(above_llik)
    score = below_llik.values - above_llik.values
    if len(samples) != len(score):
        raise ValueError()
    # Both subtractions (hyperopt's and this one) round: a few ulp of the operands' size.
    error = (below_llik.error + above_llik.error
             + 2.0**-50 * (np.abs(below_llik.values) + np.abs(above_llik.values)))
    lowest, highest = score - error, score + error
    if np.all(np.isfinite(lowest)) and np.all(np.isfinite(highest)):
        contenders = np.flatnonzero(highest >= lowest.max())  # the others are below one of these
    else:  # NaN, infinities: hyperopt's way for all
        contenders = np.arange(len(score))
    # Equal samples have equal densities, and the first of them is the one argmax takes.
    contenders = contenders[np.unique(np.asarray(samples)[contenders], return_index=True)[1]]
    contenders.sort()
    if len(contenders) > 1:
        exact = below_llik.exact(contenders) - above_llik.exact(contenders)
        return [samples[contenders[np.argmax(exact)]]] * len(samples)
    return [samples[contenders[0]]] * len(samples)


# hyperopt's node name -> its twin's
_FAST = {"ap_split_trials": tuning_ap_split_trials.__name__,
         "broadcast_best": tuning_broadcast_best.__name__,
         "adaptive_parzen_normal": tuning_adaptive_parzen_normal.__name__, "log": tuning_log.__name__,
         **{f.__name__: _fast_lpdf(f, log).__name__
            for f, log in ((hyperopt_tpe.GMM1_lpdf, False), (hyperopt_tpe.LGMM1_lpdf, True))}}
