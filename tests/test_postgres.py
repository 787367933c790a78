"""A study on a tracking server whose store is PostgreSQL: interrupted, resumed, read back.

Everything is real: a PostgreSQL server made with ``initdb`` in a temporary folder, an
``mlflow server`` over it with its own artifact folder, and the ``tuning`` command.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import DIGITS_MODEL, free_port, start_server, stop_server
from tests.test_cli import TUNING

pytestmark = pytest.mark.slow

EXPERIMENT = "postgres"
# The digits MLP; the trial whose start is the STOP_AT-th raises KeyboardInterrupt, as a
# Ctrl-C in the middle of that trial would.
HEADER = "def model(x_train, y_train, x_test, y_test):\n"
STOPPING_MODEL = DIGITS_MODEL.replace(HEADER, HEADER + '''\
    calls = os.environ.get("CALLS_FILE")
    if calls:
        with open(calls, "a") as f:
            f.write("call\\n")
        if len(open(calls).read().splitlines()) == int(os.environ.get("STOP_AT", "0")):
            raise KeyboardInterrupt
''')
assert STOPPING_MODEL != DIGITS_MODEL


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: on the PATH, else Debian's newest."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "postgres").exists():
        return Path(found).resolve().parent  # /usr/local/bin/initdb may link into Debian's folder
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    versions.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


@pytest.fixture(scope="session")
def postgres_programs() -> Path:
    """PostgreSQL's server programs, Debian's ``postgresql`` installed with apt-get when
    missing and we are root."""
    found = postgres_bin()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("these tests run a PostgreSQL server (initdb, postgres): install it with "
                    "`sudo apt-get install -y postgresql` (Debian/Ubuntu), then run them again")
    install = subprocess.run("apt-get update && apt-get install -y --no-install-recommends postgresql",
                             shell=True, capture_output=True, text=True, timeout=1800,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = postgres_bin()
    if install.returncode != 0 or found is None:
        pytest.fail(f"apt-get could not install postgresql (exit {install.returncode}):\n"
                    f"{(install.stdout + install.stderr)[-3000:]}")
    return found


def _account() -> pwd.struct_passwd:
    """Who runs PostgreSQL: this user, or as root (which postgres refuses) the ``postgres`` user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("PostgreSQL refuses to run as root and there is no `postgres` user to run it: "
                    "create one (`useradd --system postgres`) or run the tests as another user")


@pytest.fixture(scope="module")
def postgres(postgres_programs: Path) -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 with a database ``mlflow``; its SQLAlchemy URI."""
    import psycopg2

    account = _account()
    as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    # Not under pytest's temporary folders: they are private to root, and the server's
    # account must reach its data folder.
    base = Path(tempfile.mkdtemp(prefix="tuning-pg-"))
    os.chown(base, account.pw_uid, account.pw_gid)
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    initdb = subprocess.run([str(postgres_programs / "initdb"), "-D", str(data), "-U", "postgres",
                             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                            cwd=base, capture_output=True, text=True, timeout=300, **as_account)
    assert initdb.returncode == 0, initdb.stdout + initdb.stderr
    sockets.mkdir()
    os.chown(sockets, account.pw_uid, account.pw_gid)
    port = free_port()
    # Durability is of no use to a test's throwaway database: no fsync, no full page writes.
    server = subprocess.Popen(
        [str(postgres_programs / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off"],
        cwd=base, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True,
        **as_account)
    try:
        deadline = time.monotonic() + 120
        while True:  # ready when it takes a connection
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                              dbname="postgres", connect_timeout=2)
                break
            except psycopg2.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"postgres did not start (exit code {server.poll()}):\n"
                                f"{log.read_text()[-3000:]}")
                time.sleep(0.2)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3: name the driver installed.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        # SIGTERM to the postmaster: a smart shutdown, which ends its own processes.
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real ``mlflow server`` storing runs in PostgreSQL; its URL and artifact folder."""
    folder = tmp_path_factory.mktemp("postgres-server")
    port = free_port()
    process = start_server(folder, port, backend=postgres)
    yield f"http://127.0.0.1:{port}", folder / "artifacts"
    stop_server(process)


def study_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    studies = [r for r in runs if r.data.tags["tuning.kind"] == "study"]
    trials = sorted((r for r in runs if r.data.tags["tuning.kind"] == "trial"),
                    key=lambda r: int(r.data.tags["tuning.trial"]))
    return studies, trials


def test_a_study_is_interrupted_resumed_and_its_best_read_back_on_postgres(write_recipe, tmp_path,
                                                                             tracking_server):
    url, artifacts = tracking_server
    recipe = write_recipe(model=STOPPING_MODEL, extra=f"import os\nEXPERIMENT = {EXPERIMENT!r}\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CALLS_FILE": str(tmp_path / "calls.txt"),
           "STOP_AT": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", url, "--max-evals", "2",
                            "--seed", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 130, first.stdout + first.stderr
    command = first.stderr.split("resume with: ", 1)[1].strip()
    assert command == f"tuning run {recipe} --tracking-uri {url} --max-evals 2 --seed 1 --resume"
    client = MlflowClient(url)
    (study,), trials = study_runs(client)
    assert study.info.status == "KILLED"
    assert [r.info.status for r in trials] == ["FINISHED", "KILLED"]

    # Resumed to more trials: the seed is the study's own.
    resumed = subprocess.run([TUNING, "run", str(recipe), "--tracking-uri", url, "--resume",
                              "--max-evals", "4"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "4 trials finished, 0 failed" in resumed.stdout
    (again,), trials = study_runs(client)
    assert again.info.run_id == study.info.run_id  # the same study run, continued
    assert again.info.status == "FINISHED"
    assert again.data.tags["tuning.resumes"] == "1" and again.data.params["seed"] == "1"
    assert [int(r.data.tags["tuning.trial"]) for r in trials] == [1, 2, 3, 4, 5]
    assert [r.info.status for r in trials] == ["FINISHED", "KILLED", "FINISHED", "FINISHED", "FINISHED"]
    assert trials[1].data.tags["tuning.interrupted"] == "true"
    assert trials[2].data.tags["tuning.retry_of"] == trials[1].info.run_id  # its configuration again
    assert trials[2].data.tags["tuning.hyperopt_vals"] == trials[1].data.tags["tuning.hyperopt_vals"]
    finished = [r for r in trials if r.info.status == "FINISHED"]
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == study.info.run_id
    for trial in finished:
        assert {"hyperopt_loss", "val_accuracy"} <= set(trial.data.metrics), trial.data.metrics
        assert len(trial.data.params) >= 4, trial.data.params  # the recipe's hyperparameters
        (output,) = trial.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert str(model.status) == "READY" and model.source_run_id == trial.info.run_id
        # The server stored the model's files in its --artifacts-destination folder.
        assert list(artifacts.rglob(f"{output.model_id}/**/MLmodel")), model.artifact_location
    assert list(artifacts.rglob(f"{study.info.run_id}/artifacts/report/trials.csv"))  # the report

    best = subprocess.run([TUNING, "best", EXPERIMENT, "--tracking-uri", url, "--top", "5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stdout + best.stderr
    winner = min(finished, key=lambda r: r.data.metrics["hyperopt_loss"])
    assert f"tuning.load_best('{winner.info.run_id}', tracking_uri='{url}')" in best.stdout
    assert again.data.tags["tuning.best_run_id"] == winner.info.run_id
    positions = [best.stdout.index(r.info.run_id)
                 for r in sorted(finished, key=lambda r: r.data.metrics["hyperopt_loss"])]
    assert positions == sorted(positions)  # best first, by the recorded loss
