"""Search beyond TPE: grid, study limits and pruning, checked in the runs a user finds."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

import tuning
from tests.test_cli import TUNING
from tests.test_study import runs
from tuning.grid import Grid, grid_size
from tuning.pruners import HyperbandPruner, MedianPruner, PastTrial
from tuning.stopping import StopReason, StopRules
from tuning.study import _curve
from tuning.template import Template
from tuning.tracking import Tracker
from tuning.trial import Objective, TrialResult, TrialStatus

# Four grid points; epochs and layer sizes kept tiny.
GRID_MODEL = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(<<choice([8, 16])>>, activation=<<choice(["relu", "tanh"])>>),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, validation_data=(x_test, y_test), verbose=0)
    return net
'''

# Grid order puts the learning rate that learns first and the one that cannot second:
# the second trial is hopeless from its first epoch on.
LEARNING_RATE_MODEL = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=<<choice([0.5, 1e-9])>>),
                loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, validation_data=(x_test, y_test), verbose=0)
    return net
'''


def grid_of(source: str, fraction: float = 1.0, seed: int = 0) -> Grid:
    template = Template.from_source(source)
    return Grid(template, template.distributions(), fraction, seed)


def params_of(trials: list) -> set[tuple[str, str]]:
    return {(r.data.params["Dense"], r.data.params["activation"]) for r in trials}


def test_grid_order_and_fraction_sample_without_repeats():
    source = ("def model():\n    a = <<choice([1, 2, 3])>>\n    b = <<quniform(0, 40, 10)>>\n"
              "    c = <<randint(2)>>\n")
    full = grid_of(source)
    assert len(full) == full.size == 3 * 5 * 2
    # hyperopt's own encoding: choices as indices, others as values; the last marker varies fastest
    assert [full._raw(i) for i in range(3)] == [{"a": 0, "b": 0, "c": 0}, {"a": 0, "b": 0, "c": 1},
                                                {"a": 0, "b": 10, "c": 0}]
    every = {tuple(full._raw(i).values()) for i in range(len(full))}
    assert every == set(itertools.product(range(3), [0, 10, 20, 30, 40], range(2)))

    share = grid_of(source, fraction=0.3, seed=4)
    points = [tuple(share._raw(i).values()) for i in range(len(share))]
    assert len(points) == len(set(points)) == 9 and set(points) <= every
    assert points == [tuple(grid_of(source, 0.3, seed=4)._raw(i).values()) for i in range(9)]
    assert points != [tuple(grid_of(source, 0.3, seed=5)._raw(i).values()) for i in range(9)]
    share.proposed = 8  # as a resumed study sets it: the points go on in order, whatever the trial ids
    docs = share([20, 21, 22], None, None, 0)
    assert [doc["tid"] for doc in docs] == [20] and docs[0]["misc"]["vals"] == {
        k: [v] for k, v in share._raw(8).items()}  # the last point, then the grid is done


def test_grid_refuses_a_continuous_marker_naming_it_and_its_line():
    template = Template.from_source("def model():\n    a = <<choice([1, 2])>>\n    b = <<uniform(0, 1)>>\n")
    with pytest.raises(tuning.TemplateError, match=r"<string>:3: .*'b' is uniform\(0, 1\).*quniform"):
        Grid(template, template.distributions())


def test_space_of_the_digits_recipe(write_recipe):
    template = Template.from_file(write_recipe())
    distributions = template.distributions()
    assert list(distributions) == ["Dense", "activation", "Dropout", "batch_size"]
    assert grid_size(distributions) is None
    del distributions["Dropout"]
    assert grid_size(distributions) == 4 * 2 * 2


@pytest.mark.slow
def test_grid_runs_every_combination_once_and_resumes_where_it_stopped(write_recipe, store):
    recipe = write_recipe(GRID_MODEL)
    first = tuning.minimize(recipe, algo="grid", max_evals=3, tracking_uri=store, progress=False, seed=1)
    assert first.stop_reason is StopReason.MAX_EVALS and len(first.trials) == 3

    # Unfinished on purpose (as after a crash), then resumed without a budget: all of the grid.
    MlflowClient(store).update_run(first.run_id, status="KILLED")
    second = tuning.minimize(recipe, algo="grid", tracking_uri=store, progress=False, resume=True)
    client, (study,), trials = runs(store)
    assert len(trials) == 4 and second.run_id == study.info.run_id
    assert params_of(trials) == {(d, a) for d in ("8", "16") for a in ("relu", "tanh")}
    assert study.data.params["algo"] == "grid" and study.data.params["fraction"] == "1.0"
    assert study.data.tags["tuning.stop_reason"] == "grid_done"
    assert study.data.tags["tuning.max_evals"] == "4"


@pytest.mark.slow
def test_cli_grid_fraction_and_target(write_recipe, store):
    recipe = write_recipe(GRID_MODEL)
    done = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", store, "--algo", "grid",
                           "--fraction", "0.5", "--seed", "3", "--target", "0.0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # accuracy >= 0 always: the target is reached by the first trial and the study stops
    assert "stopped: accuracy reached 0 in trial 1" in done.stdout
    client, (study,), trials = runs(store)
    assert len(trials) == 1 and study.data.tags["tuning.stop_reason"] == "target"
    assert study.data.params["fraction"] == "0.5"


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--algo", "grid"], "'Dropout' is uniform(0, 0.5), which is continuous"),
    (["--fraction", "0.5"], "use it with algo 'grid'"),
])
def test_cli_grid_mistakes_are_one_line_errors(write_recipe, store, argv, message):
    recipe = write_recipe()  # the default digits recipe has a continuous dropout marker
    done = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", store, *argv],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert MlflowClient(store).search_experiments()[0].name == "Default"  # nothing was started


def result(number: int, loss: float | None) -> TrialResult:
    status = TrialStatus.OK if loss is not None else TrialStatus.FAILED
    return TrialResult(number, f"run{number}", status, {}, loss)


def test_stop_rules():
    accuracy = Objective.create("accuracy")
    rules = StopRules(accuracy, early_stop=2)
    history = [result(1, -0.5), result(2, -0.7), result(3, -0.6), result(4, None)]
    assert not rules.check(history[:3])
    assert rules.check(history) and rules.reason is StopReason.EARLY_STOP
    assert rules.detail == "2 trials without a better accuracy"
    target = StopRules(accuracy, target=0.7)
    assert not target.check(history[:1]) and target.check(history[:2])
    assert target.detail == "accuracy reached 0.7 in trial 2"
    assert StopRules(Objective.create("val_loss"), target=0.2).check([result(1, 0.19)])
    timeout = StopRules(accuracy, timeout=1e-9)
    assert timeout.check(history[:1]) and timeout.reason is StopReason.TIMEOUT
    with pytest.raises(tuning.ConfigurationError, match="early_stop must be at least 1"):
        StopRules(accuracy, early_stop=0)


@pytest.mark.slow
def test_timeout_and_early_stop_end_a_real_study(write_recipe, store):
    recipe = write_recipe(GRID_MODEL)
    study = tuning.minimize(recipe, max_evals=4, timeout=0.001, tracking_uri=store, progress=False, seed=2)
    assert len(study.trials) == 1 and study.stop_reason is StopReason.TIMEOUT
    client, (run,), _ = runs(store)
    assert run.data.tags["tuning.stop_reason"] == "timeout" and run.info.status == "FINISHED"
    assert "--timeout 0.001" in run.data.tags["tuning.stop_detail"]


def test_settings_given_as_objects_run_the_study_as_the_flat_keywords_do(write_recipe, store):
    recipe = write_recipe(GRID_MODEL)
    rules = tuning.StopRules(target=0.0)  # any accuracy reaches it: the first trial stops the study
    study = tuning.minimize(recipe, algo="grid", stop=rules, prune=MedianPruner(startup_trials=9),
                            tracking_uri=store, progress=False, seed=2, max_epochs=1)
    assert study.stop_reason is StopReason.TARGET and len(study.trials) == 1
    assert rules.reason is None  # the study ran with its own copy: the object can be reused
    client, (run,), trials = runs(store)
    assert run.data.tags["tuning.stop_reason"] == "target"
    assert run.data.tags["tuning.pruner"].startswith("MedianPruner(startup_trials=9")
    assert run.data.tags["tuning.max_epochs"] == "1" and len(trials) == len(study.trials)


@pytest.mark.parametrize(("given", "message"), [
    (dict(stop=StopRules(early_stop=2), early_stop=3), "stop= and early_stop= say the same thing twice"),
    (dict(limits=tuning.Limits(seconds=5), trial_timeout=9), "limits= and seconds= say the same thing"),
    (dict(cluster=tuning.Cluster(2), parallelism=2), "cluster= and parallelism= say the same thing"),
    (dict(limits=tuning.Limits(seconds=5), cluster=tuning.Cluster(2)), "does not combine"),
    (dict(cluster=tuning.Cluster(2), spark_master="spark://h:7077"), "cluster= and master= say"),
    (dict(parallelism=0), "parallelism must be at least 1"),
    (dict(max_epochs=0), "max_epochs must be a whole number of epochs, at least 1"),
])
def test_settings_given_twice_or_wrong_are_refused_before_any_run(write_recipe, store, given, message):
    with pytest.raises(tuning.ConfigurationError, match=message):
        tuning.minimize(write_recipe(GRID_MODEL), tracking_uri=store, **given)
    assert not MlflowClient(store).search_experiments(filter_string="name != 'Default'")


@pytest.mark.slow
def test_a_bad_max_epochs_variable_is_named(write_recipe, store, monkeypatch):
    monkeypatch.setenv("TUNING_MAX_EPOCHS", "two")
    done = subprocess.run([TUNING, "run", str(write_recipe(GRID_MODEL)), "--tracking-uri", store],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "TUNING_MAX_EPOCHS must be a whole number of epochs, at least 1; got 'two'" in done.stderr
    assert "Traceback" not in done.stderr


def past(*curves: tuple[float, ...], complete: bool = True) -> dict[int, PastTrial]:
    return {n: PastTrial(c, complete) for n, c in enumerate(curves, start=1)}


def test_the_pruners_are_reached_as_the_readme_writes_them_in_a_fresh_process():
    code = ("import tuning\n"
            "from tuning import HyperbandPruner, MedianPruner\n"
            "print(tuning.pruners.MedianPruner(startup_trials=3) == MedianPruner(startup_trials=3),\n"
            "      HyperbandPruner(min_epochs=1, reduction=3).reduction)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "3"]


@pytest.mark.slow
def test_every_public_name_resolves_in_a_fresh_process():
    code = ("import importlib, tuning\n"
            "missing = [n for n in tuning.__all__ if not hasattr(tuning, n)]\n"
            "for name in ('pruners', 'stopping', 'trial', 'worker', 'cluster', 'best', 'report',\n"
            "             'population', 'template', 'errors', 'retention', 'settings', 'study_run',\n"
            "             'study', 'optim', 'objective'):\n"
            "    module = importlib.import_module('tuning.' + name)\n"
            "    missing += [f'{name}.{n}' for n in module.__all__ if not hasattr(module, n)]\n"
            "print(len(tuning.__all__), missing)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1)[1].strip() == "[]" and int(done.stdout.split()[0]) >= 25


def test_median_pruner_compares_the_best_so_far_with_the_median_at_that_epoch():
    pruner = MedianPruner(startup_trials=2)
    earlier = past((0.5, 0.3), (0.7, 0.5))
    assert not pruner.should_prune(3, (0.9,), 2, past((0.5, 0.3)))  # warm-up: one finished trial
    assert pruner.should_prune(3, (0.65,), 2, earlier)  # median at epoch 0 is 0.6
    assert not pruner.should_prune(3, (0.55,), 2, earlier)
    assert not pruner.should_prune(3, (0.3, 0.9), 2, earlier)  # its best (0.3) still beats 0.4
    unfinished = past((0.1,), (0.1,), complete=False)  # pruned trials do not set the median
    assert not pruner.should_prune(3, (0.9,), 2, unfinished)
    assert not MedianPruner(startup_trials=2, warmup_epochs=1).should_prune(3, (0.65,), 2, earlier)


def test_hyperband_brackets_rungs_and_promotion():
    pruner = HyperbandPruner(min_epochs=1, reduction=3)
    assert pruner.brackets(9) == 3 and pruner.brackets(6) == 2 and pruner.brackets(1) == 1
    assert pruner.rungs(0, 9) == [1, 3] and pruner.rungs(1, 9) == [3] and pruner.rungs(2, 9) == []
    # Optuna's budgets for 3 brackets are 9:5:3: the bracket that prunes earliest gets most trials.
    counts = Counter(pruner.bracket(n, 9) for n in range(1, 1701))
    assert counts[0] > counts[1] > counts[2] > 100
    a, b, c = [n for n in range(1, 100) if pruner.bracket(n, 9) == 0][:3]
    other = next(n for n in range(1, 100) if pruner.bracket(n, 9) == 1)
    rivals = {a: PastTrial((0.2, 0.1, 0.1), True), b: PastTrial((0.4,), False),
              other: PastTrial((0.0,), True)}  # another bracket: no rival, however good
    assert pruner.should_prune(c, (0.3,), 9, rivals)  # 3 reached epoch 1: only the best goes on
    assert not pruner.should_prune(c, (0.1,), 9, rivals)
    assert not pruner.should_prune(c, (0.9, 0.9), 9, rivals)  # epoch 2 is no rung
    assert not pruner.should_prune(other, (0.9,), 9, {})  # bracket 1 judges first at epoch 3


def test_a_pruned_trial_ends_killed_and_tpe_sees_its_last_value(write_recipe, store):
    recipe = write_recipe(LEARNING_RATE_MODEL, epochs=3)
    study = tuning.minimize(recipe, algo="grid", tracking_uri=store, progress=False, seed=1,
                            objective="val_accuracy", prune=MedianPruner(startup_trials=1))
    client, (parent,), (good, hopeless) = runs(store)
    assert good.info.status == "FINISHED" and good.data.params["learning_rate"] == "0.5"
    assert hopeless.info.status == "KILLED" and hopeless.data.params["learning_rate"] == "1e-09"
    assert hopeless.data.tags["tuning.pruned"] == "true" and hopeless.data.tags["tuning.pruned_epoch"] == "0"
    curve = client.get_metric_history(hopeless.info.run_id, "val_accuracy")
    assert [m.step for m in curve] == [0]  # stopped after its first epoch
    assert hopeless.data.metrics["hyperopt_loss"] == pytest.approx(-curve[0].value)
    assert "model" not in {a.path for a in client.list_artifacts(hopeless.info.run_id)}
    assert [t.status for t in study.trials] == [TrialStatus.OK, TrialStatus.PRUNED]
    assert study.best.run_id == good.info.run_id and not study.failed
    assert parent.data.metrics["trials_pruned"] == 1 and parent.data.metrics["trials_ok"] == 1
    assert parent.data.tags["tuning.pruner"] == "MedianPruner(startup_trials=1, warmup_epochs=0)"


def test_a_curve_read_back_is_tunings_when_the_models_own_mlflow_callback_logged_the_epochs_too(store):
    """``mlflow.keras.MlflowCallback`` in a model logs each epoch beside tuning's, and numbers
    a second ``fit``'s epochs from 0 again: a resumed study's pruner still reads one value
    per epoch, in tuning's numbering."""
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("curves")).info.run_id
    ours = [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]  # two fits of two epochs
    theirs = [(0, 0.5), (1, 0.6), (0, 0.7), (1, 0.8)]
    for time, ((step, value), (their_step, their_value)) in enumerate(zip(ours, theirs, strict=True)):
        client.log_batch(run_id, metrics=[Metric("val_accuracy", their_value, 1000 + 2 * time, their_step),
                                          Metric("val_accuracy", value, 1001 + 2 * time, step)])
    curve = _curve(Tracker(store), run_id, Objective.create("val_accuracy"))
    assert curve == pytest.approx((-0.5, -0.6, -0.7, -0.8))


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [False, True], ids=["resumed", "resumed-in-worker"])
def test_pruning_after_resume_reads_earlier_curves_from_the_server(write_recipe, store, isolate):
    recipe = write_recipe(LEARNING_RATE_MODEL, epochs=3)
    options = dict(algo="grid", tracking_uri=store, progress=False, seed=1, objective="val_accuracy",
                   prune=MedianPruner(startup_trials=1))
    first = tuning.minimize(recipe, max_evals=1, **options)
    MlflowClient(store).update_run(first.run_id, status="KILLED")
    # The fresh process knows no curve but the one on the server: trial 2 is judged by it.
    second = tuning.minimize(recipe, resume=True, isolate=isolate, **options)
    assert [t.status for t in second.trials] == [TrialStatus.OK, TrialStatus.PRUNED]
    client, _, (_, hopeless) = runs(store)
    assert hopeless.info.status == "KILLED" and hopeless.data.tags["tuning.pruned_epoch"] == "0"
