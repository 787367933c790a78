"""The MLflow UI, for real: headless Chromium on a real ``mlflow server`` after a real study.

Screenshots land in ``test-artifacts/`` (ignored by git) for a person to look at.
Selectors are the UI's own stable hooks: run links (``a[href$='/runs/<id>']``), AG Grid
row indexes and column ids, ``data-testid`` attributes, and the column picker's titles.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from playwright.sync_api import expect

from tests.conftest import DIGITS_DATA, DIGITS_MODEL
from tests.test_cli import TUNING

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"
EXPERIMENT = "ui-study"
WAIT_MS = 60_000  # a loaded 2-core CI machine renders the React app slowly
NAME_CELL = "[role=gridcell][col-id='attributes.`Run Name`']"
LEFT_ROWS = ".ag-pinned-left-cols-container .ag-row"  # the run names live in the pinned columns


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing and we are root."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"these tests drive headless Chromium at {CHROMIUM}: install it with "
                    "`sudo apt-get install -y chromium` (Debian/Ubuntu), then run them again")
    install = subprocess.run("apt-get update && apt-get install -y --no-install-recommends chromium",
                             shell=True, capture_output=True, text=True, timeout=1800,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if install.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"apt-get could not install chromium (exit {install.returncode}):\n"
                    f"{(install.stdout + install.stderr)[-3000:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # never `playwright install`: Debian's Chromium

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def study(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-trial study of the tiny digits model, run by the CLI against the server."""
    folder = tmp_path_factory.mktemp("ui")
    recipe = folder / "recipe.py"
    recipe.write_text(DIGITS_DATA + f"\nEPOCHS = 1\nEXPERIMENT = {EXPERIMENT!r}\n" + DIGITS_MODEL)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([TUNING, "run", str(recipe), "--max-evals", "3", "--seed", "5"],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    (study_run,) = [r for r in runs if r.data.tags["tuning.kind"] == "study"]
    trials = [r for r in runs if r.data.tags["tuning.kind"] == "trial"]
    assert len(trials) == 3
    SHOTS.mkdir(exist_ok=True)
    return {"url": f"{mlflow_server}/#/experiments/{experiment.experiment_id}", "study": study_run,
            "trials": trials, "best_id": study_run.data.tags["tuning.best_run_id"], "client": client}


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1900, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    yield opened
    context.close()


def open_runs(page: Any, study: dict[str, Any]) -> None:
    """The experiment's runs table, with the assistant panel closed so the columns fit."""
    page.goto(study["url"] + "/runs")
    page.locator(f"a[href$='/runs/{study['study'].info.run_id}']").first.wait_for()
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def link(run_id: str) -> str:
    return f"a[href$='/runs/{run_id}']"


def row_index(page: Any, run_id: str) -> int:
    """Where a run's row is in the table (AG Grid rows are positioned, not in DOM order)."""
    row = page.locator(LEFT_ROWS).filter(has=page.locator(link(run_id)))
    return int(row.get_attribute("row-index"))


def test_the_study_run_lists_its_trials_nested_under_it(page, study):
    open_runs(page, study)
    study_id = study["study"].info.run_id
    trial_ids = [t.info.run_id for t in study["trials"]]
    assert all(page.locator(link(i)).count() == 0 for i in trial_ids), "collapsed: trials hidden"
    page.locator(NAME_CELL).filter(has=page.locator(link(study_id))).locator("button").click()
    for trial_id in trial_ids:
        page.locator(link(trial_id)).wait_for()
    page.screenshot(path=SHOTS / "ui-study-expanded.png")
    assert row_index(page, study_id) == 0
    assert sorted(row_index(page, i) for i in trial_ids) == [1, 2, 3]
    names = page.locator(LEFT_ROWS).filter(has=page.locator(link(trial_ids[0]))).inner_text()
    assert re.search(r"trial-[123]", names)


def test_hyperparameter_columns_and_sorting_by_val_accuracy(page, study):
    open_runs(page, study)
    page.get_by_test_id("column-selection-dropdown").first.click()
    tree = page.locator(".du-bois-light-tree-treenode")
    tree.filter(has=page.locator("[title^='Parameters (']")).locator(".du-bois-light-tree-checkbox").click()
    tree.filter(has=page.locator("[title='val_accuracy']")).locator(".du-bois-light-tree-checkbox").click()
    page.keyboard.press("Escape")
    for name in ("Dense", "activation", "Dropout", "batch_size", "val_accuracy"):
        page.get_by_test_id(f"sort-header-{name}").wait_for()

    page.get_by_test_id("sort-header-val_accuracy").click()
    scores = {t.info.run_id: t.data.metrics["val_accuracy"] for t in study["trials"]}
    best = {i for i, score in scores.items() if score == max(scores.values())}  # ties: any of them
    first = page.locator(f"{LEFT_ROWS}[row-index='0'] a[href*='/runs/']")
    expect(first).to_have_attribute("href", re.compile("|".join(f"/runs/{i}$" for i in best)))
    page.screenshot(path=SHOTS / "ui-sorted-by-val-accuracy.png")
    first_id = first.get_attribute("href").rsplit("/", 1)[-1]
    params = next(t for t in study["trials"] if t.info.run_id == first_id).data.params
    center = page.locator(".ag-center-cols-container .ag-row[row-index='0']")
    for name in ("Dense", "activation", "batch_size"):
        assert center.locator(f"[col-id='params.`{name}`']").inner_text() == params[name]
    shown = center.locator("[col-id='metrics.`val_accuracy`']").inner_text()
    assert float(shown) == pytest.approx(scores[first_id])


def test_the_best_trial_page_shows_its_logged_model(page, study):
    best_id = study["best_id"]
    model_id = study["client"].get_run(best_id).outputs.model_outputs[0].model_id
    page.goto(f"{study['url']}/runs/{best_id}")
    model_link = page.locator(f"a[href$='/models/{model_id}']").first
    model_link.wait_for()
    page.get_by_text("Logged models (1)").wait_for()
    model_link.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "ui-best-trial.png")
    assert model_link.inner_text() == "model"


def test_the_study_run_shows_its_report(page, study):
    page.goto(f"{study['url']}/runs/{study['study'].info.run_id}/artifacts")
    page.get_by_text("report", exact=True).first.click()
    page.get_by_text("objective.png", exact=True).first.click()
    page.get_by_text("report/objective.png", exact=True).wait_for()
    page.locator("img[src^='blob:']").first.wait_for()
    page.screenshot(path=SHOTS / "ui-study-report.png")
    page.get_by_text("report.html", exact=True).first.click()
    frame = page.frame_locator("iframe").first
    frame.get_by_text("accuracy by trial (max)").first.wait_for()
    page.screenshot(path=SHOTS / "ui-study-report-html.png")
