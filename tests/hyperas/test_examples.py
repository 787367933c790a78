"""hyperas' own examples, ported only as Keras 3 and an offline machine require, run with
``from tuning import optim`` against a real ``mlflow server``.

Each port lives in ``examples/`` with every edit marked ``# port:``. A script runs as
``python script.py`` would (``__name__ == "__main__"``) in an empty working folder, with
the store and experiment given as MLflow's variables. Each must finish, return what
hyperas returns, leave one FINISHED child run per trial with the hyperparameters as
params and tags, and write no file of ours into the working folder.
"""

from __future__ import annotations

import numbers
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

import tuning

EXAMPLES = Path(__file__).parent / "examples"

# script: (trials, hyperparameter names, the choice markers among them, files the script writes)
SCRIPTS = {
    "simple.py": (5, ["Dropout", "Dense", "Dropout_1", "batch_size"], {"Dense", "batch_size"}, set()),
    "mnist_readme.py": (5, ["Dropout", "Dense", "Activation", "Dropout_1", "Dropout_2", "add",
                            "optimizer", "batch_size"],
                        {"Dense", "Activation", "Dropout_2", "add", "optimizer", "batch_size"}, set()),
    # hyperas 0.4.0's README: `if conditional({{choice(['three', 'four'])}}) == 'four':`
    "mnist_readme_0_4_0.py": (5, ["Dropout", "Dense", "Activation", "Dropout_1", "conditional", "add",
                                  "optimizer", "batch_size"],
                              {"Dense", "Activation", "conditional", "add", "optimizer", "batch_size"},
                              set()),
    "complex.py": (5, ["Dropout", "Dense", "Activation", "Dropout_1", "Dropout_2", "add", "optimizer",
                       "batch_size"], {"Dense", "Activation", "Dropout_2", "add", "optimizer", "batch_size"},
                   set()),
    "use_intermediate_functions.py": (5, ["Dropout", "Dense", "Dropout_1", "batch_size"],
                                      {"Dense", "batch_size"}, set()),
    # hyperas names these dropout1, dropout1_1, dense_filter1, dense_filter1_1 … (its
    # first-textual-match bug); ours follow each marker's own identifier.
    "hyperas_in_intermediate_fns.py": (3, ["dropout1", "dropout2", "dense_filter1", "dense_filter2",
                                           "dense_filter3"],
                                       {"dense_filter1", "dense_filter2", "dense_filter3"}, set()),
    "cifar_generator_cnn.py": (3, ["Dropout", "Dropout_1"], set(), set()),
    "cnn_lstm.py": (3, ["Dropout", "Convolution1D", "Convolution1D_1"], {"Convolution1D", "Convolution1D_1"},
                    set()),
    "lstm.py": (3, ["Dropout", "batch_size"], {"batch_size"}, {"keras_weights.keras"}),
    "mnist_ensemble.py": (4, ["Dropout", "Dense", "Dropout_1"], {"Dense"}, set()),
    "mnist_distributed.py": (3, ["layer_1_size", "l1_dropout"], set(), set()),  # + its .h5 in /tmp
    "simple_notebook_multiple_inputs.py": (3, ["Dropout", "Dense", "Dropout_1", "batch_size"],
                                           {"Dense", "batch_size"}, set()),
}


@pytest.fixture
def hyperas_env(tmp_path, monkeypatch, mlflow_server, request):
    """An empty working folder; the store and experiment as MLflow's variables set them."""
    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # what is left in /tmp is checked
    experiment = f"hyperas-{request.node.name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # use_intermediate_functions shows a figure
    monkeypatch.syspath_prepend(str(EXAMPLES))  # `from offline import mnist`
    return work, experiment


def studies(server: str, experiment: str) -> list[tuple]:
    """Each study run of the experiment with its trial runs, oldest study first."""
    client = MlflowClient(server)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} on the server"
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("tuning.kind") == "study"]
    return [(p, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]) for p in parents]


def check_study(study: tuple, trials: int, names: list[str]) -> None:
    parent, children = study
    assert parent.info.status == "FINISHED"
    assert len(children) == trials
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get("tuning.error")
        assert set(run.data.params) == set(names)
        assert all(run.data.tags[name] == run.data.params[name] for name in names)
        assert run.outputs.model_outputs, "the trial's model is in the store"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_hyperas_example_runs_with_one_import_changed(script, hyperas_env, mlflow_server, monkeypatch):
    work, experiment = hyperas_env
    trials, names, choices, written = SCRIPTS[script]
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script)])
    result = runpy.run_path(str(EXAMPLES / script), run_name="__main__")

    (study,) = studies(mlflow_server, experiment)
    check_study(study, trials, names)
    best_run = result.get("best_run")
    if "ensemble_model" in result:  # mnist_ensemble: best_ensemble's voting model
        assert result["preds"].shape == (len(result["y_test"]),)
        return
    # What hyperas returns: hyperopt's raw values (choice indices), the best model.
    assert set(best_run) == set(names)
    assert all(isinstance(best_run[n], numbers.Integral) and best_run[n] >= 0 for n in choices)
    assert isinstance(result["best_model"], keras.Model)
    best = min((r for r in study[1]), key=lambda r: r.data.metrics["hyperopt_loss"])
    assert result["best_model"].count_params() == tuning.load_best(best.info.run_id).count_params()
    assert {p.name for p in work.iterdir()} == written  # no temp_model.py, no store of ours
    left = {p.suffix for p in Path(tempfile.gettempdir()).iterdir()}  # no model copies, no logs
    assert left == ({".h5"} if script == "mnist_distributed.py" else set()), left


@pytest.mark.slow
def test_the_hyperas_notebook_runs_with_one_import_changed(hyperas_env, mlflow_server, monkeypatch):
    work, experiment = hyperas_env
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))  # the kernel's `from offline import mnist`
    nb = nbformat.read(EXAMPLES / "simple_notebook.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    (study,) = studies(mlflow_server, experiment)
    check_study(study, 3, ["Dropout", "Dense", "Dropout_1", "batch_size"])
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []))
    assert "Evalutation of best performing model:" in text
    assert not list(work.iterdir())


@pytest.mark.slow
def test_a_model_with_the_scripts_own_functions_reloads_in_a_fresh_process(hyperas_env, mlflow_server):
    """hyperas_in_intermediate_fns: a Lambda of the script's function, its own loss and metric.

    In a new process that only imports tuning, ``load_best`` finds them in the script
    the study recorded (run as a module: its ``__main__`` part does not run again).
    """
    work, experiment = hyperas_env
    runpy.run_path(str(EXAMPLES / "hyperas_in_intermediate_fns.py"), run_name="__main__")
    code = ("import sys, tuning; m = tuning.load_best(sys.argv[1]); "
            "print(type(m).__name__, [l.__class__.__name__ for l in m.layers])")
    loaded = subprocess.run([sys.executable, "-c", code, experiment], cwd=work, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "Functional" in loaded.stdout and "Lambda" in loaded.stdout
    assert "best run" not in loaded.stdout  # the script's own __main__ part did not run
