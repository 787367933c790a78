"""The package as users install it: a wheel and an sdist built from this tree, the wheel
installed (not editable) into a new virtual environment that runs a recipe."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_built_wheel_installs_by_its_name_and_runs_a_recipe(write_recipe, tmp_path):
    dist = tmp_path / "dist"
    # --no-isolation: the build needs no download (setuptools and build come with the test extras).
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
                    "--outdir", str(dist), str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    wheel, = dist.glob("keras_mlflow_tuning-*.whl")
    sdist, = dist.glob("keras_mlflow_tuning-*.tar.gz")

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "Name: keras-mlflow-tuning" in metadata.splitlines()
    assert "tuning = tuning.cli:main" in entry_points
    assert {"tuning/__init__.py", "tuning/cli.py", "tuning/spark.py", "tuning/py.typed"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "recipes/"))]
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "tuning/template.py"} <= members

    # A new environment: the wheel installed into it, its dependencies taken from this
    # environment's packages (a path line, which unlike a site folder does not run this
    # environment's editable-install hook), so nothing is downloaded.
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv's own
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "mlflow").is_dir())
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, env=env)

    work = tmp_path / "work"
    work.mkdir()
    recipe = write_recipe(name="digits.py")
    where = subprocess.run([str(python), "-c", "import tuning; print(tuning.__file__)"], cwd=work,
                           check=True, capture_output=True, text=True, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not this tree
    command = [str(venv / "bin" / "tuning"), "run", str(recipe), "--max-evals", "2", "--seed", "1"]
    run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "study digits" in run.stdout and "2 trials finished, 0 failed" in run.stdout

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id], "tags.`tuning.kind` = 'trial'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    models = client.search_logged_models([experiment.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in runs)
