"""Population based training: members train side by side; the worst copy the best.

A population of configurations drawn from the recipe's markers trains in rounds. After
every round but the last, the bottom quarter of the members (judged by the study's
objective) each copy a random member of the top quarter, its weights, optimizer state
and hyperparameter values (exploit), and move its mutable values by a factor of 0.8 or
1.2 (explore), as pbt-keras does; :mod:`tuning.mutation` says what is mutable. Every
member is a child run of one study run, so ``tuning best``, ``tuning report`` and
``tuning.load_best`` answer as for a search.

A copy runs ``model()`` again with the new values up to its ``fit`` and loads the
source's weights and optimizer state into that model. Changing a live model instead
would not save work: Keras bakes dropout rates and penalty factors into the traced
training step, so a new value needs a new trace either way, and a ``Dropout`` made with
rate 0 has no random generator to start dropping with. The recipe's own code puts every
value where the user wrote it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.quiet import tensorflow_start_up

with tensorflow_start_up():
    import keras
import numpy as np
from hyperopt import pyll

from tuning.distributions import Distribution
from tuning.errors import ConfigurationError, RecipeError, TrackingError, TuningError
from tuning.keras_callback import EpochLog, FitCaptured, capturing, recording
from tuning.mutation import MUTABLE, explore, is_real, mutable
from tuning.patience import DEFAULT_PATIENCE
from tuning.progress import RichReporter, SilentReporter
from tuning.recipe import Recipe
from tuning.sender import MetricSender
from tuning.settings import StudyConfig
from tuning.stopping import StopReason, ended_by, stop_detail
from tuning.study_run import StudyResult, StudyRun, start_study_run
from tuning.template import assigned
from tuning.tracking import LOSS_METRIC, STRATEGY_TAG, Tracker
from tuning.trial import (
    Reporter,
    TrialResult,
    TrialSetup,
    TrialStatus,
    end_failed,
    end_finished,
    free_models,
    measure,
)

__all__ = ["pbt"]  # the rest is this package's own


def pbt(recipe: str | Path | Callable[..., Any] | Recipe, data: Callable[[], Any] | None = None,
        *, population: int = 8, rounds: int = 5, epochs_per_round: int | None = None,
        fraction: float = 0.25, seed: int | None = None, experiment: str | None = None,
        tracking_uri: str | None = None, objective: str | None = None, mode: str | None = None,
        log_model: bool = True, progress: bool = True,
        patience: float = DEFAULT_PATIENCE) -> StudyResult:
    """Train ``population`` members in ``rounds``; after each round the bottom ``fraction``
    copies the top ``fraction`` and perturbs (population based training).

    ``recipe`` and ``data`` are what :func:`tuning.minimize` takes. ``model()`` runs up to
    its first ``fit``; from then on training is driven here, ``epochs_per_round`` epochs a
    round (default: that ``fit``'s ``epochs // rounds``, so the total stays the recipe's).
    Members are judged by the study's objective (``objective``/``mode``, else the recipe's
    ``OBJECTIVE``/``MODE``). The same ``seed`` draws the same population. Every member is
    a child run ``trial-N`` with ``round.*`` and ``hp.*`` metrics at ``step=round``; each
    copy tags the copier ``tuning.exploit.round_R`` with its source, and the study run
    gets ``exploits.json``.

    Example::

        import tuning
        study = tuning.pbt("recipes/diabetes_regression.py", population=8, rounds=5, seed=1)
        print(study.best.params, study.best.loss)
        model = tuning.load_best(study.experiment)
    """
    if population < 2:
        raise ConfigurationError(f"population must be at least 2, since members copy each other; "
                                 f"got {population}")
    if rounds < 1:
        raise ConfigurationError(f"rounds must be at least 1, got {rounds}")
    if epochs_per_round is not None and epochs_per_round < 1:
        raise ConfigurationError(f"epochs_per_round must be at least 1, got {epochs_per_round}")
    if not 0 < fraction <= 0.5:
        raise ConfigurationError(f"fraction must be in (0, 0.5]: the share that copies and the share "
                                 f"copied from; got {fraction}")
    recipe = Recipe.of(recipe, data, tracking_uri)
    config = StudyConfig.merge(recipe, seed=seed, experiment=experiment, objective=objective, mode=mode,
                               log_model=log_model, progress=progress)
    plan = _Plan(population, rounds, epochs_per_round, fraction)
    return _run(recipe, config, plan, Tracker(tracking_uri, patience))


@dataclass(frozen=True)
class _Plan:
    population: int
    rounds: int
    epochs_per_round: int | None  # None: the recipe fit's epochs // rounds
    fraction: float


@dataclass(frozen=True)
class _Build:
    """A compiled, untrained model as ``model()`` made it, its ``fit`` arguments, what is mutable."""

    model: Any
    fit: dict[str, Any]
    mutable: tuple[str, ...]


def _run(recipe: Recipe, config: StudyConfig, plan: _Plan, tracker: Tracker) -> StudyResult:
    tracker.check()
    distributions = recipe.template.distributions(recipe.namespace)
    data = recipe.load_data()
    rng = np.random.default_rng(config.seed)
    starts, builds = _populate(recipe, data, distributions, plan.population, config.seed, rng)
    epochs = plan.epochs_per_round or _epochs_per_round(builds, plan.rounds)
    experiment_id, experiment = tracker.choose_experiment(config.experiment, recipe.name)
    study_run_id = start_study_run(
        tracker, experiment_id, recipe, distributions,
        {"population": plan.population, "rounds": plan.rounds, "epochs_per_round": epochs,
         "fraction": plan.fraction, "seed": config.seed, "objective": config.objective.metric,
         "mode": config.objective.mode}, tags={STRATEGY_TAG: "pbt"})
    reporter: Reporter = (RichReporter(plan.population * plan.rounds, objective=config.objective)
                          if config.progress
                          else SilentReporter())
    setup = TrialSetup(tracker, experiment_id, study_run_id, recipe, data, config.trial, reporter)
    members: list[_Member] = []
    events: list[dict[str, Any]] = []

    def conclude(status: str) -> StudyResult:
        if status in ("KILLED", "FAILED"):
            for member in _alive(members):
                member.kill()  # stopped with the study, by Ctrl-C or by an error of ours
        if status:
            tracker.log_json(study_run_id, events, "exploits.json")
        reason = ended_by(status, StopReason.ROUNDS_DONE)
        detail = (f"all {plan.rounds} rounds of {epochs} epochs ran; {len(events)} copies"
                  if reason is StopReason.ROUNDS_DONE else stop_detail(reason, len(members)))
        return StudyResult(tracker.uri, experiment_id, experiment, study_run_id, config.seed,
                           tuple(m.result for m in members), distributions, reason, detail, config.objective)

    try:
        with StudyRun(tracker, study_run_id, conclude) as study_run:
            members += [_Member.start(setup, number, values, build)
                        for number, (values, build) in enumerate(zip(starts, builds, strict=True), 1)]
            with reporter if isinstance(reporter, RichReporter) else nullcontext():
                _train(members, events, plan, epochs, distributions, setup, rng)
            for member in _alive(members):
                member.guarded(member.finish, setup)
    finally:
        free_models()
    return study_run.result  # type: ignore[return-value]  # set as the block ends


def _populate(recipe: Recipe, data: tuple[Any, ...], distributions: dict[str, Distribution],
              population: int, seed: int, rng: np.random.Generator
              ) -> tuple[list[dict[str, Any]], list[_Build | Exception]]:
    """The members' first values and models, before any run starts: a recipe PBT cannot
    change fails with one message instead of leaving a study behind."""
    space = {name: d.to_hyperopt(name) for name, d in distributions.items()}
    drawn = [pyll.stochastic.sample(space, rng=rng) for _ in range(population)]
    starts = [{name: values[name] for name in distributions} for values in drawn]  # recipe order
    builds = [_first_build(recipe, data, distributions, values, seed + number)
              for number, values in enumerate(starts, 1)]
    built = [b for b in builds if isinstance(b, _Build)]
    if built and not any(b.mutable for b in built):
        raise RecipeError(f"{recipe.template.filename}: population based training changes markers "
                          f"that set {MUTABLE}; no marker of model() does "
                          f"({', '.join(distributions) or 'no markers'}). Write, for example, "
                          "Adam(learning_rate=<<choice([1e-3, 1e-2])>>) or Dropout(<<uniform(0, 0.5)>>); "
                          "integer and text markers and learning rate schedules stay fixed")
    return starts, builds


def _epochs_per_round(builds: list[_Build | Exception], rounds: int) -> int:
    """The recipe fit's ``epochs // rounds`` (at least 1), so that the total stays the recipe's."""
    fits = [b.fit for b in builds if isinstance(b, _Build)]
    return max(1, (fits[0].get("epochs", 1) if fits else 1) // rounds)


def _train(members: list[_Member], events: list[dict[str, Any]], plan: _Plan, epochs: int,
           distributions: dict[str, Distribution], setup: TrialSetup, rng: np.random.Generator) -> None:
    """Every round: train the members still alive, then (but after the last) exploit and explore."""
    say = setup.reporter.console.print if isinstance(setup.reporter, RichReporter) else _silent
    for round_ in range(plan.rounds):
        say(f"round {round_} (of {plan.rounds})")
        for member in _alive(members):
            member.guarded(member.train, round_, epochs, setup)
        if round_ + 1 < plan.rounds:
            for event in _exploit(list(_alive(members)), round_ + 1, plan.fraction, distributions,
                                  setup, rng):
                say(_describe(event))
                events.append(event)


def _build(recipe: Recipe, data: tuple[Any, ...], values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``model()`` with ``values`` up to its first ``fit``: the compiled model, fit's arguments."""
    try:
        with capturing(), assigned(values):
            recipe.model(*data)
    except FitCaptured as captured:
        return captured.model, captured.arguments
    raise RecipeError(f"{recipe.template.filename}: population based training trains the model "
                      "that model() passes to fit, but model() returned without calling fit")


def _first_build(recipe: Recipe, data: tuple[Any, ...], distributions: dict[str, Distribution],
                 values: dict[str, Any], seed: int) -> _Build | Exception:
    """A member's model, seeded as the trial of the same number in a search, or the error
    its ``model()`` raised."""
    keras.utils.set_random_seed(seed % 2**32)
    try:
        model, fit = _build(recipe, data, values)
    except TuningError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's code failed: that member's run says so
        return error
    return _Build(model, fit, mutable(model, values, distributions, lambda v: _build(recipe, data, v)[0]))


def _exploit(members: list[_Member], round_: int, fraction: float, distributions: dict[str, Distribution],
             setup: TrialSetup, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The bottom members copy random top members and explore; the events, for exploits.json."""
    ranked = sorted(members, key=lambda m: m.loss)  # type: ignore[arg-type, return-value]
    count = min(math.ceil(len(ranked) * fraction), len(ranked) // 2)  # the two shares never overlap
    events = []
    for member in ranked[len(ranked) - count:]:
        source = ranked[rng.integers(count)]
        values = explore(source.values, source.mutable, distributions, rng)
        event = {"round": round_, "member": member.name, "member_run_id": member.run_id,
                 "member_loss": member.loss, "source": source.name, "source_run_id": source.run_id,
                 "source_loss": source.loss, "before": member.values, "source_values": source.values,
                 "after": values}
        if member.guarded(member.copy, source, values, round_, setup):
            events.append(event)
    return events


def _describe(event: dict[str, Any]) -> str:
    """One exploit for the terminal: who copied whom, and which values moved."""
    moved = ", ".join(f"{name} {event['source_values'][name]:.3g} → {value:.3g}"
                      for name, value in event["after"].items() if value != event["source_values"][name])
    return (f"  {event['member']} (loss {event['member_loss']:.4g}) copies {event['source']} "
            f"(loss {event['source_loss']:.4g}): {moved or 'no value moved'}")


def _silent(text: str) -> None:
    pass


def _alive(members: list[_Member]) -> Iterator[_Member]:
    return (m for m in members if m.status is TrialStatus.OK)


@dataclass
class _Member:
    """One member: its run, its model and ``fit`` arguments now, its hyperparameter values now."""

    number: int
    run_id: str
    values: dict[str, Any]  # a copy takes its source's values, perturbed; params keep the first
    log: EpochLog
    sender: MetricSender
    tracker: Tracker
    build: _Build | None = None
    status: TrialStatus = TrialStatus.OK
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # test_* and objective_* of the last round
    error: str | None = None
    seconds: float = 0.0
    model_logged: bool = False

    @classmethod
    def start(cls, setup: TrialSetup, number: int, values: dict[str, Any],
              build: _Build | Exception) -> _Member:
        tracker = setup.tracker
        run_id = tracker.start_run(setup.experiment_id, f"trial-{number}", "trial", setup.study_run_id,
                                   tags={"tuning.trial": str(number)})
        mutable = ", ".join(build.mutable) if isinstance(build, _Build) else ""
        tracker.log(run_id, params=values, tags={**values, "tuning.mutable": mutable})
        sender = tracker.sender(run_id)

        def sink(step: int, metrics: dict[str, float]) -> None:
            sender.send(metrics, step)
            setup.reporter.epoch_ended(number, step, metrics)

        log = EpochLog(sink, quiet=setup.options.quiet_fit)
        member = cls(number, run_id, dict(values), log, sender, tracker)
        if isinstance(build, Exception):
            member.fail(build)
        else:
            member.build = build
        return member

    @property
    def name(self) -> str:
        return f"trial-{self.number}"

    @property
    def mutable(self) -> tuple[str, ...]:
        return self.build.mutable if self.build is not None else ()

    @property
    def result(self) -> TrialResult:
        return TrialResult(self.number, self.run_id, self.status, self.values,
                           self.loss if self.status is TrialStatus.OK else None, self.error, self.seconds,
                           model_logged=self.model_logged)

    def guarded(self, step: Callable[..., None], *args: Any) -> bool:
        """Run one step of this member; if the user's code raises, the member fails, the rest go on."""
        try:
            step(*args)
        except TrackingError:
            raise
        except Exception as error:  # noqa: BLE001 - recorded in the member's run
            self.fail(error)
            return False
        return True

    def train(self, round_: int, epochs: int, setup: TrialSetup) -> None:
        """Train one round, score it, and log its metrics and values at ``step=round_``."""
        assert self.build is not None
        started = time.perf_counter()
        setup.reporter.trial_started(self.number, self.run_id, self.values)
        with recording(self.log):  # epoch numbers go on from the last round's
            self.build.model.fit(**{**self.build.fit, "initial_epoch": round_ * epochs,
                                    "epochs": (round_ + 1) * epochs})
        self.loss, self.metrics = measure(self.build.model, self.log.last, setup.options.objective,
                                          setup.test)
        rounds = {f"round.{k}": v for k, v in {**self.log.last, **self.metrics}.items()}
        values = {f"hp.{k}": v for k, v in self.values.items() if is_real(v)}
        self.tracker.log(self.run_id, metrics={**rounds, **values}, step=round_)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        setup.reporter.trial_ended(TrialResult(self.number, self.run_id, TrialStatus.OK, self.values,
                                               self.loss, seconds=seconds))

    def copy(self, source: _Member, values: dict[str, Any], round_: int, setup: TrialSetup) -> None:
        """Go on from ``source``'s model and optimizer state with ``values`` from ``round_`` on."""
        assert source.build is not None
        model, fit = _build(setup.recipe, setup.data, values)
        _transfer(source.build.model, model)
        self.build = _Build(model, fit, source.build.mutable)
        self.values = values
        self.tracker.log(self.run_id, tags={**values, f"tuning.exploit.round_{round_}": source.name,
                                            "tuning.mutable": ", ".join(self.mutable)})

    def finish(self, setup: TrialSetup) -> None:
        assert self.build is not None and self.loss is not None
        self.model_logged = end_finished(setup, self.run_id, self.sender, self.build.model, self.values,
                                         {**self.metrics, LOSS_METRIC: self.loss}, len(self.log.epochs))

    def fail(self, error: BaseException) -> None:
        self.status, self.build = TrialStatus.FAILED, None
        self.error = end_failed(self.tracker, self.run_id, self.sender, error)

    def kill(self) -> None:
        with suppress(TrackingError):
            self.sender.close()
        self.tracker.end_run(self.run_id, "KILLED")
        self.status = TrialStatus.KILLED


def _transfer(source: Any, target: Any) -> None:
    """Load the source's weights and optimizer state, all but the learning rate, into ``target``."""
    _assign(target.weights, source.weights)
    if not target.optimizer.built:
        target.optimizer.build(target.trainable_variables)
    _assign(target.optimizer.variables, source.optimizer.variables, keep=target.optimizer.learning_rate)


def _assign(targets: list[Any], sources: list[Any], keep: Any = None) -> None:
    if [tuple(v.shape) for v in targets] != [tuple(v.shape) for v in sources]:
        raise RuntimeError(f"cannot copy a member into a model of another shape ({len(sources)} "
                           f"variables into {len(targets)}): build the model before fit, e.g. "
                           "with keras.Input")
    for target, source in zip(targets, sources, strict=True):
        if target is not keep:
            target.assign(source.numpy())  # a copy: JAX's training step donates its buffers
