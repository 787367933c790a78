"""Every recipe and notebook runs as shipped, offline, and leaves the expected runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient
from sklearn.datasets import load_digits

import tuning
from tuning.template import Template

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def mnist_like(tmp_path: Path) -> Path:
    """An .npz in MNIST's layout (28x28 uint8 images, integer labels) made from the 8x8 digits."""
    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))  # 24x24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))) * (255 / 16)
    images, labels = images.astype("uint8"), digits.target.astype("uint8")
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images[:1500], y_train=labels[:1500], x_test=images[1500:], y_test=labels[1500:])
    return path


def test_the_recipes_are_the_documented_ones():
    assert [r.name for r in RECIPES] == ["diabetes_regression.py", "digits_cnn.py", "iris_mlp.py",
                                         "mnist_cnn.py"]
    assert [n.name for n in NOTEBOOKS] == ["quickstart.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_runs_offline_and_leaves_its_runs(recipe, store, mnist_like, monkeypatch):
    monkeypatch.setenv("TUNING_MNIST_NPZ", str(mnist_like))
    study = tuning.minimize(recipe, max_evals=2, max_epochs=1, seed=0, tracking_uri=store,
                            progress=False)
    assert not study.failed, [t.error for t in study.failed]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(recipe.stem)  # each recipe names its experiment
    runs = client.search_runs([experiment.experiment_id], "tags.`tuning.kind` = 'trial'")
    names = {m.name for m in Template.from_file(recipe).markers}
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        assert set(run.data.params) == names
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [0]  # capped at one epoch
    assert study.best.loss == min(r.data.metrics["hyperopt_loss"] for r in runs)


@pytest.mark.slow
def test_regression_recipe_minimises_val_loss(store):
    recipe = ROOT / "recipes" / "diabetes_regression.py"
    study = tuning.minimize(recipe, max_evals=1, max_epochs=2, tracking_uri=store, progress=False,
                            log_model=False)
    run = MlflowClient(store).get_run(study.best.run_id)
    assert run.data.metrics["hyperopt_loss"] == pytest.approx(run.data.metrics["val_loss"])
    assert 0 < study.best.loss < 10


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_runs_top_to_bottom(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNING_MAX_EPOCHS", "1")
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("quickstart")
    trials = client.search_runs([experiment.experiment_id], "tags.`tuning.kind` = 'trial'")
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "best trial:" in text and "predicted:" in text
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the accuracy-by-trial plot
