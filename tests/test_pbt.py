"""Population based training against a real sqlite store: the runs, schedules and copies a user finds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import tuning
from tuning.cli import main
from tuning.distributions import Distribution
from tuning.mutation import FACTORS, perturb

ROOT = Path(__file__).resolve().parent.parent
DIABETES = ROOT / "recipes" / "diabetes_regression.py"

# A learning rate of 0 trains nothing, so a member that copies another must score exactly
# what its source scored a round before: a check that weights really are copied.
FROZEN = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(<<choice([8, 16])>>, activation="relu"),
        keras.layers.Dropout(<<choice([0.1, 0.2, 0.3, 0.4])>>),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=0.0), loss="categorical_crossentropy")
    net.fit(x_train, y_train, epochs=EPOCHS, batch_size=128, validation_data=(x_test, y_test), verbose=0)
    return net
'''
VAL_LOSS = 'OBJECTIVE = "val_loss"\n'


def runs(store: str, experiment: str) -> tuple:
    client = MlflowClient(store)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               order_by=["attributes.start_time ASC"])
    study = [r for r in found if r.data.tags["tuning.kind"] == "study"]
    members = {r.info.run_name: r for r in found if r.data.tags["tuning.kind"] == "trial"}
    return client, study, members


def history(client: MlflowClient, run, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}


def exploits(client: MlflowClient, study_run_id: str) -> list[dict]:
    return json.loads(Path(client.download_artifacts(study_run_id, "exploits.json", ".")).read_text())


def test_perturb_moves_by_the_factors_within_the_markers_bounds():
    rates = Distribution.create("choice", [1e-3, 3e-3, 1e-2, 3e-2])
    assert [perturb(3e-3, rates, f) for f in FACTORS] == [1e-3, 1e-2]  # the neighbouring options
    assert [perturb(3e-2, rates, f) for f in FACTORS] == [1e-2, 3e-2]  # at an end it stays
    penalty = Distribution.create("choice", [0.0, 1e-5, 1e-4])
    assert [perturb(0.0, penalty, f) for f in FACTORS] == [0.0, 1e-5]  # 0 can still move up
    dropout = Distribution.create("quniform", 0.0, 0.4, 0.1)
    assert [perturb(0.30000000000000004, dropout, f) for f in FACTORS] == [0.2, 0.4]
    assert perturb(0.2, dropout, 1.2) == 0.3  # 0.24 rounds to 0.2: at least one step
    assert perturb(64, Distribution.create("quniform", 16, 128, 16), 1.2) == 80  # nearest 76.8
    assert perturb(0.45, Distribution.create("uniform", 0, 0.5), 1.2) == 0.5
    assert perturb(0.2, Distribution.create("uniform", 0, 0.5), 0.8) == pytest.approx(0.16)
    assert perturb(math.exp(-3.1), Distribution.create("loguniform", -8, -3), 1.2) == math.exp(-3)


@pytest.mark.slow
def test_a_copy_goes_on_from_its_source_model_with_perturbed_values(write_recipe, store):
    recipe = write_recipe(model=FROZEN, extra=VAL_LOSS)
    study = tuning.pbt(recipe, population=4, rounds=3, epochs_per_round=1, seed=2, tracking_uri=store,
                       progress=False, log_model=False)
    client, (parent,), members = runs(store, "recipe")
    events = exploits(client, parent.info.run_id)
    assert [e["round"] for e in events] == [1, 2]  # one copier a round: a quarter of 4
    for event in events:
        member, source, step = members[event["member"]], members[event["source"]], event["round"]
        assert member.data.tags[f"tuning.exploit.round_{step}"] == source.info.run_name
        # The same weights (the learning rate is 0), even where Dropout's rate changed.
        assert history(client, member, "round.val_loss")[step] == pytest.approx(
            history(client, source, "round.val_loss")[step - 1], rel=1e-6)
        assert history(client, member, "hp.Dense")[step] == history(client, source, "hp.Dense")[step - 1]
        rate = history(client, source, "hp.Dropout")[step - 1]
        dropout = study.space["Dropout"]
        assert history(client, member, "hp.Dropout")[step] in {perturb(rate, dropout, f) for f in FACTORS}
        assert event["after"]["Dropout"] == pytest.approx(history(client, member, "hp.Dropout")[step])
        assert float(member.data.tags["Dropout"]) == history(client, member, "hp.Dropout")[2]  # values now


@pytest.mark.slow
def test_diabetes_members_are_runs_with_round_schedules_and_exploits(store):
    study = tuning.pbt(DIABETES, population=4, rounds=3, epochs_per_round=1, seed=1, tracking_uri=store,
                       progress=False)
    client, (parent,), members = runs(store, "diabetes_regression")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tuning.strategy"] == "pbt"
    assert {k: parent.data.params[k] for k in ("population", "rounds", "epochs_per_round", "seed")} == \
        {"population": "4", "rounds": "3", "epochs_per_round": "1", "seed": "1"}
    assert parent.data.tags["tuning.best_run_id"] == study.best.run_id
    assert sorted(members) == ["trial-1", "trial-2", "trial-3", "trial-4"]
    mutable = ["l1", "l2", "Dropout", "learning_rate"]
    mlflow.set_tracking_uri(store)
    for run in members.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["tuning.mutable"] == ", ".join(mutable)
        for metric in ("round.val_loss", "round.loss", "hp.learning_rate", "hp.l2", "hp.Dense", "val_loss"):
            assert sorted(history(client, run, metric)) == [0, 1, 2], metric
        assert run.data.metrics["hyperopt_loss"] == history(client, run, "round.val_loss")[2]

    events = exploits(client, parent.info.run_id)
    assert len(events) == 2
    for copier in {members[e["member"]].info.run_id: members[e["member"]] for e in events}.values():
        # The copier's last values logged are the ones its rebuilt model has.
        model = mlflow.keras.load_model(f"runs:/{copier.info.run_id}/model")
        last = {name: history(client, copier, f"hp.{name}")[2] for name in mutable}
        assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(last["learning_rate"], rel=1e-6)
        assert model.layers[1].rate == pytest.approx(last["Dropout"])
        penalty = model.layers[0].kernel_regularizer
        assert (penalty.l1, penalty.l2) == (pytest.approx(last["l1"]), pytest.approx(last["l2"]))
    for event in events:
        member, source, step = members[event["member"]], members[event["source"]], event["round"]
        assert member.data.tags[f"tuning.exploit.round_{step}"] == event["source"]
        assert event["member_loss"] >= event["source_loss"]  # the worse copies the better
        for name, distribution in study.space.items():
            before = history(client, source, f"hp.{name}")[step - 1]
            after = history(client, member, f"hp.{name}")[step]
            assert after == pytest.approx(event["after"][name])
            if name in mutable:
                assert any(after == pytest.approx(perturb(before, distribution, f)) for f in FACTORS), name
            else:
                assert after == before, name  # copied as it was
    assert tuning.load_best("diabetes_regression", tracking_uri=store) is not None


@pytest.mark.slow
def test_a_member_that_raises_fails_alone(write_recipe, store):
    recipe = write_recipe(extra=VAL_LOSS, model='''
    def model(x_train, y_train, x_test, y_test):
        kind = <<choice(["ok", "build", "train"])>>
        rate = <<choice([0.1, 0.2, 0.3])>>
        if kind == "build":
            raise RuntimeError("boom in model()")

        def crash(epoch, logs):
            if kind == "train":
                raise RuntimeError("boom in training")

        net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dropout(rate),
                                keras.layers.Dense(10, activation="softmax")])
        net.compile(optimizer="adam", loss="categorical_crossentropy")
        net.fit(x_train, y_train, epochs=2, validation_data=(x_test, y_test), verbose=0,
                callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=crash)])
        return net
    ''')
    study = tuning.pbt(recipe, population=4, rounds=2, seed=3, tracking_uri=store, progress=False,
                       log_model=False)
    client, (parent,), members = runs(store, "recipe")
    kinds = {run.data.params["kind"]: run for run in members.values()}
    assert set(kinds) == {"ok", "build", "train"}, "seed 3 draws every kind"
    for kind, message in (("build", "boom in model()"), ("train", "boom in training")):
        run = kinds[kind]
        assert run.info.status == "FAILED"
        assert run.data.tags["tuning.error"] == f"RuntimeError: {message}"
        assert message in Path(client.download_artifacts(run.info.run_id, "error.txt", ".")).read_text()
    assert kinds["ok"].info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert len(study.failed) == 2 and study.best.params["kind"] == "ok"


RAISES = '''
def model(x_train, y_train, x_test, y_test):
    raise RuntimeError("never built " + str(<<uniform(0, 1)>>) + <<choice(["a", "b"])>>)
'''


@pytest.mark.slow
def test_the_same_seed_draws_the_same_population(write_recipe, store):
    recipe = write_recipe(model=RAISES)
    populations = []
    for experiment, seed in (("one", 5), ("two", 5), ("three", 6)):
        study = tuning.pbt(recipe, population=3, seed=seed, experiment=experiment, tracking_uri=store,
                           progress=False)
        assert study.best is None and len(study.failed) == 3
        populations.append([t.params for t in study.trials])
    assert populations[0] == populations[1] != populations[2]
    _, (parent,), _ = runs(store, "one")
    assert parent.info.status == "FAILED" and parent.data.tags["tuning.error"] == "all 3 trials failed"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_cli_trains_a_population_and_prints_the_best_member(write_recipe, store):
    recipe = write_recipe(model=FROZEN, extra=VAL_LOSS, epochs=4)
    result = invoke("pbt", str(recipe), "--population", "4", "--rounds", "2", "--seed", "2",
                    "--tracking-uri", store, "--no-model")
    assert result.exit_code == 0, result.output
    assert "4 trials finished, 0 failed; stopped: all 2 rounds of 2 epochs ran; 1 copies" in result.output
    assert "best trial" in result.output and "the best trial logged no model" in result.output
    assert "load_best" not in result.output  # --no-model: no reload command for a model not in the store
    assert "copies trial-" in result.output  # the exploit, as it happened


NOTHING_MUTABLE = '''
def model(x_train, y_train, x_test, y_test):
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(<<choice([8, 16])>>),
                            keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer="adam", loss="categorical_crossentropy")
    net.fit(x_train, y_train, epochs=1, batch_size=<<choice([32, 64])>>, verbose=0)
    return net
'''

NO_FIT = '''
def model(x_train, y_train, x_test, y_test):
    return {"loss": <<uniform(0, 1)>>, "status": "ok"}
'''


@pytest.mark.parametrize(("model", "flags", "message"), [
    (FROZEN, ("--population", "1"), "population must be at least 2, since members copy each other; got 1"),
    (NOTHING_MUTABLE, (), "population based training changes markers that set the optimizer's learning "
                          "rate, a layer's dropout rate or an L1/L2 regularizer factor; no marker of "
                          "model() does (Dense, batch_size)"),
    (NO_FIT, (), "population based training trains the model that model() passes to fit, but "
                 "model() returned without calling fit"),
    (RAISES, (), "all 2 trials failed; first error: RuntimeError: never built"),
])
def test_bad_input_is_one_clear_line_and_exit_1(write_recipe, store, model, flags, message):
    recipe = write_recipe(model=model)
    result = invoke("pbt", str(recipe), "--population", "2", *flags, "--tracking-uri", store)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    if model is not RAISES:
        assert MlflowClient(store).search_runs(["0"]) == []  # refused before any run
