"""Study plots, the model registry and ``tuning ui``: files written, artifacts, versions, CLI."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import tuning
from tests.conftest import DIGITS_DATA, DIGITS_MODEL, free_port
from tests.test_cli import TUNING
from tuning.cli import main
from tuning.report import REPORT_DIR, Point, Report, _draw, attach_report, importance
from tuning.tracking import Tracker

PNG = b"\x89PNG\r\n\x1a\n"
FILES = ["objective.png", "params.png", "importance.png", "report.html", "trials.csv"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuning.StudyResult]:
    """One 5-trial study in MLflow's default store of a folder, as `tuning run` leaves it."""
    folder = tmp_path_factory.mktemp("report")
    recipe = folder / "recipe.py"
    recipe.write_text(textwrap.dedent(DIGITS_DATA) + "\nEPOCHS = 1\nEXPERIMENT = 'plots'\n"
                      + textwrap.dedent(DIGITS_MODEL))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the default store, and its artifacts, land in this folder
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield tuning.minimize(recipe, max_evals=5, seed=4, progress=False)


def trial_runs(study: tuning.StudyResult):
    client = MlflowClient(study.tracking_uri)
    return client, client.search_runs([study.experiment_id], "tags.`tuning.kind` = 'trial'")


@pytest.mark.slow
def test_a_finished_study_attaches_its_plots_to_the_study_run(study):
    client = MlflowClient(study.tracking_uri)
    artifacts = {Path(a.path).name: a for a in client.list_artifacts(study.run_id, REPORT_DIR)}
    assert sorted(artifacts) == sorted(FILES)
    assert all(a.file_size > 1000 for name, a in artifacts.items() if name != "trials.csv")
    assert client.get_run(study.run_id).info.status == "FINISHED"
    # the attached copy is the real thing, not an empty placeholder
    png = Path(client.download_artifacts(study.run_id, f"{REPORT_DIR}/objective.png", str(Path.cwd())))
    assert png.read_bytes().startswith(PNG)
    # Drawn from the trials the study held, it says what a report read back from MLflow says.
    attached = Path(client.download_artifacts(study.run_id, f"{REPORT_DIR}/trials.csv", str(Path.cwd())))
    redrawn = tuning.study_report("plots", study.tracking_uri, Path.cwd() / "redrawn")
    assert attached.read_text() == (redrawn.folder / "trials.csv").read_text()


def test_study_report_reads_the_objective_as_users_think_of_it(study, tmp_path):
    report = tuning.study_report("plots", study.tracking_uri, tmp_path / "out")
    _, runs = trial_runs(study)
    assert report.study_run_id == study.run_id
    assert (report.objective, report.mode, report.failed) == ("accuracy", "max", 0)
    assert [p.number for p in report.trials] == [1, 2, 3, 4, 5]
    by_id = {r.info.run_id: r for r in runs}
    for point in report.trials:
        run = by_id[point.run_id]
        assert point.value == pytest.approx(-run.data.metrics["hyperopt_loss"])  # accuracy, not -accuracy
        assert point.value == pytest.approx(run.data.metrics["test_accuracy"])
        assert point.params == run.data.params
    assert report.top(1)[0].run_id == study.best.run_id
    assert set(report.importance) == {"Dense", "activation", "Dropout", "batch_size"}
    assert sum(report.importance.values()) == pytest.approx(1.0)
    assert list(report.importance.values()) == sorted(report.importance.values(), reverse=True)

    assert [f.name for f in report.files] == FILES
    for name in ("objective.png", "params.png", "importance.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Plotly.newPlot" in page and page.count("Plotly.newPlot") == 3
    assert page.count("plotly.js v") == 1, "the script is embedded once, for offline viewing"
    with (tmp_path / "out" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {r["run_id"]: float(r["accuracy"]) for r in rows} == {p.run_id: p.value for p in report.trials}


def test_importance_needs_a_few_trials_and_finds_what_matters():
    def point(n: int, x: float, act: str, value: float) -> Point:
        return Point(n, f"run{n}", {"x": str(x), "act": act}, value, -value)

    assert importance([point(n, n, "relu", n) for n in range(3)]) == {}, "3 trials: too few"
    assert importance([point(n, n, "relu", 0.5) for n in range(6)]) == {}, "every trial scored the same"
    rng = np.random.default_rng(0)
    points = [point(n, x, str(rng.choice(["relu", "tanh"])), x * 2)
              for n, x in enumerate(rng.random(30))]
    shares = importance(points)
    assert list(shares) == ["x", "act"] and shares["x"] > 0.9


@pytest.mark.slow
def test_report_html_can_load_plotly_js_from_the_cdn_or_a_url_instead_of_inlining_it(study, tmp_path,
                                                                                      monkeypatch):
    inline = (tuning.study_report("plots", study.tracking_uri, tmp_path / "inline").folder
              / "report.html").stat().st_size
    cdn = tuning.study_report("plots", study.tracking_uri, tmp_path / "cdn", plotly_js="cdn")
    page = (cdn.folder / "report.html").read_text()
    assert 'src="https://cdn.plot.ly/plotly-' in page and "plotly.js v" not in page
    assert len(page) < 100_000 < 4_000_000 < inline
    monkeypatch.setenv("TUNING_PLOTLY_JS", "https://ml.example.org/static/plotly.min.js")
    result = invoke("report", "plots", "--tracking-uri", study.tracking_uri, "--out", str(tmp_path / "url"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "url" / "report.html").read_text()
    assert page.count('src="https://ml.example.org/static/plotly.min.js"') == 1
    bad = CliRunner().invoke(main, ["report", "plots", "--tracking-uri", study.tracking_uri,
                                    "--plotly-js", "offline"])
    assert bad.exit_code == 1
    assert "plotly.js source must be 'inline', 'cdn' or the URL of a .js file, got 'offline'" in bad.output


@pytest.mark.slow
def test_a_report_of_thousands_of_trials_stays_readable_and_its_page_small(tmp_path):
    rng = np.random.default_rng(1)
    points = tuple(Point(n, f"{n:032x}", {"lr": f"{10 ** -x:.6g}", "act": str(rng.choice(["relu", "tanh"])),
                                          "units": str(int(rng.integers(8, 64)))}, 1 - x / 5, x / 5 - 1)
                   for n, x in enumerate(rng.random(5000) * 4, 1))
    shares = importance(points)  # learnt from a sample of them: the cost of 2,000 trials
    assert list(shares)[0] == "lr" and shares["lr"] > 0.9
    report = Report("big", "0" * 32, "accuracy", "max", points, 0, shares, tmp_path, (),
                    {"lr": {"distribution": "loguniform(-9, 0)"}})
    files = {f.name: f for f in _draw(report, plotly_js="cdn")}
    page = files["report.html"].read_text()
    templates = page.count('"scattergl":[{')  # plotly's theme names every trace type per figure
    assert page.count('"type":"scattergl"') - templates == 4  # WebGL: the objective, 3 parameters
    assert len(page) < 5000 * 400, "each point's hover text once, not once per panel"
    assert files["objective.png"].read_bytes().startswith(PNG)


def test_a_report_that_cannot_be_drawn_warns_and_never_raises(study, caplog):
    with caplog.at_level(logging.WARNING, logger="tuning"):
        attach_report(dataclasses.replace(study, run_id="f" * 32), Tracker(study.tracking_uri))  # no such run
    assert "could not draw the study report of run ffff" in caplog.text


def test_a_study_whose_trials_all_failed_has_no_report_and_no_warning(write_recipe, store, caplog):
    recipe = write_recipe(model='''
    def model(x_train, y_train, x_test, y_test):
        raise RuntimeError(<<choice(["boom", "bang"])>>)
    ''')
    with caplog.at_level(logging.WARNING, logger="tuning"):
        study = tuning.minimize(recipe, max_evals=2, tracking_uri=store, progress=False)
    assert study.best is None and caplog.text == ""
    assert MlflowClient(store).list_artifacts(study.run_id, REPORT_DIR) == []


def test_report_command_prints_a_results_summary_and_writes_plots(study, tmp_path):
    result = invoke("report", "plots", "--out", str(tmp_path / "plots"), "--top", "2",
                    "--tracking-uri", study.tracking_uri)
    assert result.exit_code == 0, result.output
    best = study.best
    for expected in ("Results summary", f"Results in {tmp_path / 'plots'}", "Showing 2 best trials",
                     'Objective(name="accuracy", direction="max")', f"Trial {best.number} summary",
                     f"Dense: {best.params['Dense']}", f"accuracy: {-best.loss:.6g} ▲", f"Run: {best.run_id}",
                     "Hyperparameter importance — from only 5 trials: a rough guide:",
                     "5 finished trials, 0 failed; wrote:"):
        assert expected in result.output
    assert result.output.count(" summary\n") == 3  # "Results summary" and two trials
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(FILES)

    default = invoke("report", "plots", "--tracking-uri", study.tracking_uri, "--log")
    assert default.exit_code == 0, default.output
    assert (tmp_path / "plots-report" / "params.png").exists()
    assert f"attached to study run {study.run_id} under report/" in default.output


def test_report_command_on_a_missing_experiment_exits_1(study):
    result = invoke("report", "nope", "--tracking-uri", study.tracking_uri)
    assert result.exit_code == 1
    assert "error: no experiment 'nope'" in result.output and "plots" in result.output


def test_best_register_makes_a_version_with_alias_champion(study):
    client = MlflowClient(study.tracking_uri)
    result = invoke("best", "plots", "--register", "digits", "--tracking-uri", study.tracking_uri)
    assert result.exit_code == 0, result.output
    assert (f"registered run {study.best.run_id} as model 'digits' version 1, alias 'champion': "
            "tuning.load_best('models:/digits@champion')") in result.output
    champion = client.get_model_version_by_alias("digits", "champion")
    assert (str(champion.version), champion.run_id) == ("1", study.best.run_id)
    logged = client.get_run(study.best.run_id).outputs.model_outputs[0].model_id
    assert champion.source == f"models:/{logged}"

    again = invoke("best", "plots", "--register", "digits", "--tracking-uri", study.tracking_uri)
    assert again.exit_code == 0 and "version 2" in again.output
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "2"
    assert client.get_model_version("digits", "1").aliases == []

    x = np.random.default_rng(2).random((4, 64)).astype("float32")
    registered = tuning.load_best("models:/digits@champion", study.tracking_uri)
    by_run = tuning.load_best(study.best.run_id, study.tracking_uri)
    np.testing.assert_allclose(registered.predict(x, verbose=0), by_run.predict(x, verbose=0))


@pytest.mark.slow
def test_register_without_a_logged_model_explains_why(write_recipe, store):
    tuning.minimize(write_recipe(), max_evals=1, tracking_uri=store, progress=False, log_model=False)
    result = invoke("best", "recipe", "--register", "m", "--tracking-uri", store)
    assert result.exit_code == 1
    assert "has no logged model: it was run with --no-model" in result.output


def test_ui_on_a_tracking_server_just_prints_its_address():
    result = invoke("ui", "--tracking-uri", "http://127.0.0.1:1")
    assert result.exit_code == 0
    assert "http://127.0.0.1:1 is a tracking server with its own UI: open http://127.0.0.1:1" in result.output


def _started_ui(port: int, cwd: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """`tuning ui` in ``cwd``, and its output up to the line with the address (or its end)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen([TUNING, "ui", "--port", str(port)], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "MLflow UI:" in line:
            break
    return process, lines


@pytest.mark.slow
def test_ui_serves_the_default_store_of_the_working_folder(study):
    folder = Path(study.tracking_uri.removeprefix("sqlite:///")).parent
    port = free_port()
    process, lines = _started_ui(port, folder)
    try:
        assert lines[0] == f"starting the MLflow UI on http://127.0.0.1:{port} (about 10 s) …\n"
        address = f"MLflow UI: http://127.0.0.1:{port}  (store {study.tracking_uri}; Ctrl-C stops it; "
        assert len(lines) == 2 and lines[1].startswith(address)  # and nothing of MLflow's own
        log = Path(lines[1].split("MLflow's own messages: ", 1)[1].rstrip(")\n"))
        assert "Uvicorn running" in log.read_text()
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("plots")
        assert experiment is not None and experiment.experiment_id == study.experiment_id
        assert client.get_run(study.run_id).data.tags["tuning.kind"] == "study"
        # MLflow's GenAI job consumers (about 20 CPU-seconds at start) are left off.
        commands = [" ".join(p.cmdline()) for p in psutil.Process(process.pid).children(recursive=True)]
        assert not [c for c in commands if "huey" in c]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        assert process.stdout.read() == ""  # MLflow's request log and warnings stay in its log
        assert not log.exists()  # removed once the UI was stopped as asked
    with pytest.raises(OSError):  # the server and its workers are gone with it
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_ui_on_a_taken_port_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("ui", "--port", str(port))
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is taken (another UI?): open http://127.0.0.1:{port}" in result.output


def test_axes_follow_the_space_and_ties_rank_alike_in_best_and_report(study, tmp_path):
    report = tuning.study_report("plots", study.tracking_uri, tmp_path / "axes")
    assert report.axis("batch_size") == ("category", ["32", "64"])  # a choice, in the recipe's order
    assert report.axis("activation") == ("category", ["relu", "tanh"])
    assert report.axis("Dense") == ("linear", []) and report.axis("Dropout") == ("linear", [])
    page = (tmp_path / "axes" / "report.html").read_text()
    assert '"categoryarray":["32","64"]' in page.replace(" ", "")

    def point(number: int, rate: float, dropout: float) -> Point:
        return Point(number, f"run{number}", {"rate": str(rate), "dropout": str(dropout)}, 0.5, -0.5)

    dropouts = [0.001, 0.01, 0.1, 0.3, 0.9]  # 900x apart: a guess from the values would say log
    trials = tuple(point(n, 10.0 ** -n, dropouts[n - 1]) for n in range(1, 6))
    space = {"rate": {"distribution": "loguniform(-12, -2)"}, "dropout": {"distribution": "uniform(0, 1)"}}
    drawn = dataclasses.replace(report, trials=trials, space=space)
    assert drawn.axis("rate") == ("log", [])
    assert drawn.axis("dropout") == ("linear", [])  # a uniform is linear, however wide its values
    assert [p.number for p in drawn.top(5)] == [1, 2, 3, 4, 5]  # a tie: the earlier trial first
