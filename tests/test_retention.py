"""keep_models: only the N best trials keep their model; the others' files leave the store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import tuning
from tuning.cli import main

# Every call does better than the one before (the loss is 1 / calls so far, counted in a
# file so a resumed study goes on counting), and the fourth call is interrupted: which
# trials should keep their model is known in advance. No training: a tiny model is built.
IMPROVING = '''
from pathlib import Path

COUNTER = Path(__file__).with_name("calls")


def model(x_train, y_train, x_test, y_test):
    calls = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
    COUNTER.write_text(str(calls))
    if calls == INTERRUPT_AT:
        raise KeyboardInterrupt
    net = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(<<quniform(8, 16, 8)>>),
                            keras.layers.Dense(10, activation="softmax")])
    return {"loss": 1 / calls, "status": "ok", "model": net}
'''


def trial_runs(uri: str, experiment: str) -> dict[int, mlflow.entities.Run]:
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name(experiment).experiment_id],
        "tags.`tuning.kind` = 'trial'")
    return {int(r.data.tags["tuning.trial"]): r for r in runs}


def model_location(uri: str, run_id: str) -> str:
    """Where the run's logged model keeps its files."""
    client = MlflowClient(uri)
    (output,) = client.get_run(run_id).outputs.model_outputs
    return client.get_logged_model(output.model_id).artifact_location


def files(uri: str, location: str) -> list[str]:
    return [f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=location, tracking_uri=uri)]


def loadable(uri: str, run_id: str) -> bool:
    try:
        tuning.load_best(run_id, tracking_uri=uri)
    except tuning.TrackingError:
        return False
    return True


@pytest.mark.parametrize("where", ["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def test_only_the_best_trials_keep_their_model_and_a_registered_one_stays(
        where, write_recipe, store, mlflow_server, request):
    uri = store if where == "sqlite" else mlflow_server
    experiment = f"keep-{where}-{request.node.name[-8:]}"
    recipe = write_recipe(IMPROVING, extra="INTERRUPT_AT = 0\n")
    registered, locations = {}, {}

    def register_second(result: tuning.TrialResult) -> None:  # while the study runs, as a user might
        locations[result.number] = model_location(uri, result.run_id)
        if result.number == 2:
            registered["version"] = tuning.register_best(experiment, f"reg-{where}", tracking_uri=uri)

    study = tuning.minimize(str(recipe), max_evals=5, seed=1, experiment=experiment, tracking_uri=uri,
                            keep_models="best:2", progress=False, callbacks=[register_second])

    runs = trial_runs(uri, experiment)
    assert sorted(runs) == [1, 2, 3, 4, 5] and study.best.number == 5
    assert all(r.info.status == "FINISHED" for r in runs.values())
    for number in (4, 5, 2):  # the two best; and the registered one, though it fell behind
        assert any(f.endswith("MLmodel") for f in files(uri, locations[number])), number
        assert loadable(uri, runs[number].info.run_id)
        assert "tuning.model_deleted" not in runs[number].data.tags
    for number, pushed_by in ((1, 3), (3, 5)):
        assert files(uri, locations[number]) == []
        why = r"it was deleted \(keep_models=best:2: only the 2 best trials keep their model; .*\); the best"
        with pytest.raises(tuning.TrackingError, match=why):
            tuning.load_best(runs[number].info.run_id, tracking_uri=uri)
        reason = runs[number].data.tags["tuning.model_deleted"]
        assert "keep_models=best:2" in reason and f"trial {pushed_by} made trial {number}" in reason
        assert runs[number].data.metrics["hyperopt_loss"] == pytest.approx(1 / number)  # the rest stays
        assert runs[number].data.params
    assert tuning.load_best(experiment, tracking_uri=uri).layers[0].units in (8, 16)
    assert registered["version"].run_id == runs[2].info.run_id
    assert tuning.load_best(f"models:/reg-{where}@champion", tracking_uri=uri).layers[0].units in (8, 16)
    parent = MlflowClient(uri).get_run(study.run_id)
    assert parent.data.tags["tuning.keep_models"] == "best:2"


@pytest.mark.slow
def test_a_resumed_study_keeps_n_models_counting_the_trials_before_it(write_recipe, store):
    recipe = write_recipe(IMPROVING, extra="INTERRUPT_AT = 4\n")
    with pytest.raises(KeyboardInterrupt):
        tuning.minimize(str(recipe), max_evals=6, seed=1, tracking_uri=store, keep_models="best:2",
                        progress=False)
    study = tuning.minimize(str(recipe), max_evals=6, seed=1, tracking_uri=store, keep_models="best:2",
                            progress=False, resume=True)
    runs = trial_runs(store, study.experiment)
    holders = {n for n, run in runs.items() if loadable(store, run.info.run_id)}
    # Trial 5 reruns the interrupted trial 4; then 6 and 7: the two best are the last two.
    assert [t.number for t in study.trials] == [1, 2, 3, 5, 6, 7] and holders == {6, 7}
    assert len(list(Path().rglob("MLmodel"))) == 2  # the files of the others are gone
    deleted = {n for n, run in runs.items() if "tuning.model_deleted" in run.data.tags}
    assert deleted == {1, 2, 3, 5}  # trial 4 was interrupted before it had a model
    assert "trial 5 made trial 2" in runs[2].data.tags["tuning.model_deleted"]  # counted from before


def test_keep_models_none_logs_no_model_and_a_bad_policy_is_a_usage_error(write_recipe, store):
    recipe = write_recipe(IMPROVING, extra="INTERRUPT_AT = 0\n")
    runner = CliRunner()
    bad = runner.invoke(main, ["run", str(recipe), "--tracking-uri", store, "--keep-models", "best:0"])
    assert bad.exit_code == 1
    assert ("keep_models must be 'all', 'none' or 'best:N' with N ≥ 1 (e.g. best:5), got 'best:0'"
            in bad.output)
    none = runner.invoke(main, ["run", str(recipe), "--tracking-uri", store, "--keep-models", "none",
                                "--max-evals", "2"])
    assert none.exit_code == 0, none.output
    runs = trial_runs(store, "recipe")
    assert len(runs) == 2 and all(not r.outputs.model_outputs for r in runs.values())
