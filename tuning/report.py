"""Plots of a study, read back from MLflow alone: what the search found, and what mattered.

Three pictures, each as a PNG (matplotlib) and together in one interactive HTML page
(plotly, its script embedded so the page works offline and inside the MLflow UI):

- ``objective.png``: the objective of every finished trial, in the user's terms
  (accuracy, not hyperopt's negated loss), with the running best;
- ``params.png``: each hyperparameter against the objective;
- ``importance.png``: how much each hyperparameter explains the objective (a random
  forest's feature importances), drawn once the study has a few finished trials;
- ``trials.csv``: one row per finished trial, its objective and hyperparameters.

A study logs them under ``report/`` of its run when it ends; ``tuning report`` redraws
them for any study.

Example::

    import tuning
    report = tuning.study_report("digits_cnn", out="report")
    print(report.summary(top=3))
    print(report.importance)      # {'Dropout': 0.61, 'Dense': 0.25, ...}
"""

from __future__ import annotations

import csv
import dataclasses
import html
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tuning.best import find_experiment
from tuning.errors import ConfigurationError, NoTrialsError
from tuning.tracking import KIND_TAG, LOSS_METRIC, Tracker, format_value
from tuning.trial import TrialStatus

__all__ = [  # the rest is this package's own
    "Point", "Report", "attach_report", "log_report", "plotly_source", "study_report",
]

if TYPE_CHECKING:
    from tuning.study_run import StudyResult

REPORT_DIR = "report"  # the folder of the study run's artifacts that holds the plots
MIN_TRIALS_FOR_IMPORTANCE = 4  # below this a forest explains noise, not hyperparameters
TRUSTED_IMPORTANCE = 30  # below this many trials the importance plot says it is a rough guide
IMPORTANCE_SAMPLE = 2000  # trials the importance forest learns from, at most (as many explain it well)
CROWDED = 1000  # above this many trials, points are drawn small and translucent, WebGL in the page

_log = logging.getLogger("tuning")


@dataclass(frozen=True)
class Point:
    """One finished trial: its params as MLflow stores them (strings) and its objective."""

    number: int
    run_id: str
    params: dict[str, str]
    value: float  # the objective as the user thinks of it, e.g. accuracy
    loss: float  # what hyperopt minimised


@dataclass(frozen=True)
class Report:
    """A study's finished trials, the importance of its hyperparameters, the files drawn."""

    experiment: str
    study_run_id: str
    objective: str
    mode: str  # "max" or "min"
    trials: tuple[Point, ...]  # finished trials, in trial order
    failed: int
    importance: dict[str, float]  # highest first; empty with too few trials to tell
    folder: Path
    files: tuple[Path, ...]
    space: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the study's space.json

    def axis(self, name: str) -> tuple[str, list[str]]:
        """How to draw a hyperparameter: ``("category", options in the recipe's order)``,
        ``("log", [])`` or ``("linear", [])``, from the marker's distribution (a guess from
        the values for a study without ``space.json``)."""
        marker = self.space.get(name, {})
        kind = str(marker.get("distribution", "")).split("(", 1)[0]
        raw = [t.params.get(name) for t in self.trials]
        if kind in ("choice", "pchoice", "randint") or (not kind and _numbers(raw) is None):
            order = [str(v) for v in marker.get("values") or []]
            seen = [str(v) for v in dict.fromkeys(raw) if str(v) not in order]
            return "category", order + sorted(seen)
        if kind in ("loguniform", "qloguniform", "lognormal", "qlognormal"):
            return "log", []
        if not kind:
            numbers = [n for n in _numbers(raw) or [] if n > 0]
            if len(numbers) == len(raw) and max(numbers) / min(numbers) > 100:
                return "log", []
        return "linear", []

    @property
    def params(self) -> list[str]:
        """Hyperparameter names, in the order the trials logged them."""
        return list(dict.fromkeys(name for t in self.trials for name in t.params))

    def top(self, n: int = 5) -> list[Point]:
        """The ``n`` best trials, best first; a tie goes to the earlier trial, as in ``best``."""
        return sorted(self.trials, key=lambda t: (t.loss, t.number))[:n]

    def summary(self, top: int = 5) -> str:
        """The best trials as keras-tuner's ``results_summary()`` prints them."""
        best = self.top(top)
        lines = ["Results summary", f"Results in {self.folder}", f"Showing {len(best)} best trials",
                 f'Objective(name="{self.objective}", direction="{self.mode}")']
        for point in best:
            lines += ["", f"Trial {point.number} summary", "Hyperparameters:",
                      *(f"{name}: {value}" for name, value in point.params.items()),
                      f"{self.objective}: {point.value:.6g} {'▲' if self.mode == 'max' else '▼'}",
                      f"Run: {point.run_id}"]
        if self.importance:
            lines += ["", "Hyperparameter importance" + (_few(self) or "") + ":",
                      *(f"{name}: {share:.3f}" for name, share in self.importance.items())]
        return "\n".join(lines)


def study_report(experiment: str, tracking_uri: str | None = None, out: str | Path | None = None,
                 *, study: str | None = None, plotly_js: str | None = None) -> Report:
    """Draw the plots of ``experiment``'s newest study (or the study run ``study``) into ``out``.

    ``out`` is created if needed; None means a new temporary folder. Raises
    :class:`~tuning.errors.NoTrialsError` when the study has no finished trial.
    ``plotly_js`` (or ``TUNING_PLOTLY_JS``) says where ``report.html`` gets plotly.js: see
    :func:`plotly_source`.

    Example::

        report = tuning.study_report("digits_cnn", out="report")
        [f.name for f in report.files]   # ['objective.png', 'params.png', ..., 'trials.csv']
    """
    tracker = Tracker.reader(tracking_uri)
    found = find_experiment(tracker, experiment)
    study_run = tracker.run(study) if study else _newest_study(tracker, found.experiment_id, experiment)
    finished, failed = [], 0
    for run in tracker.trial_runs(found.experiment_id, study_run.info.run_id):
        loss = run.data.metrics.get(LOSS_METRIC)
        if run.info.status != "FINISHED" or loss is None:
            failed += run.info.status == "FAILED"
            continue
        finished.append(_Finished(int(run.data.tags.get("tuning.trial", 0)), run.info.run_id,
                                  dict(run.data.params), loss))
    if not finished:
        raise NoTrialsError(f"study {study_run.info.run_id} of {experiment!r} has no finished trial")
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="tuning-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    return _drawn(experiment, study_run.info.run_id, study_run.data.params.get("objective", LOSS_METRIC),
                  study_run.data.params.get("mode", "min"), finished, failed, folder,
                  tracker.read_json(study_run.info.run_id, "space.json") or {}, plotly_js)


def log_report(report: Report, tracking_uri: str | None = None) -> None:
    """Attach the report's files to its study run, under ``report/``."""
    _log_files(report, Tracker(tracking_uri))


def _log_files(report: Report, tracker: Tracker) -> None:
    for path in report.files:
        tracker.log_file(report.study_run_id, str(path), REPORT_DIR)


def attach_report(study: StudyResult, tracker: Tracker | None = None) -> None:
    """Draw and log a study's report at its end, from the trials it holds (nothing is read
    back), through the study's own ``tracker``; never raises: the study is what matters."""
    tracker = tracker or Tracker(study.tracking_uri)
    finished = [_Finished(t.number, t.run_id, {k: format_value(v) for k, v in t.params.items()}, t.loss)
                for t in study.trials if t.status is TrialStatus.OK and t.loss is not None]
    if not finished:
        return  # every trial failed: nothing to draw, and the study already says why
    failed = sum(t.status is TrialStatus.FAILED for t in study.trials)
    space = {name: {"distribution": d.describe(), "values": d.grid} for name, d in study.space.items()}
    try:
        with tempfile.TemporaryDirectory(prefix="tuning-report-") as folder:
            _log_files(_drawn(study.experiment, study.run_id, study.objective.metric, study.objective.mode,
                              finished, failed, Path(folder), space), tracker)
    except Exception as error:  # noqa: BLE001 - a plotting failure must not fail a finished search
        _log.warning("could not draw the study report of run %s: %s", study.run_id, error)


class _Finished(NamedTuple):
    """A finished trial as both sources give it: params as MLflow stores them (strings)."""

    number: int
    run_id: str
    params: dict[str, str]
    loss: float


def _drawn(experiment: str, study_run_id: str, objective: str, mode: str, finished: list[_Finished],
           failed: int, folder: Path, space: dict[str, dict[str, Any]],
           plotly_js: str | None = None) -> Report:
    """The report of these finished trials, its files drawn into ``folder``."""
    sign = -1.0 if mode == "max" else 1.0  # hyperopt minimises the negated objective when maximising
    points = tuple(Point(t.number, t.run_id, t.params, sign * t.loss, t.loss)
                   for t in sorted(finished, key=lambda t: t.number))
    report = Report(experiment, study_run_id, objective, mode, points, failed, importance(points),
                    folder, (), space)
    return dataclasses.replace(report, files=tuple(_draw(report, plotly_source(plotly_js))))


def plotly_source(choice: str | None = None) -> str | bool:
    """How ``report.html`` loads plotly.js, from ``choice`` or ``TUNING_PLOTLY_JS``:
    ``inline`` (the default: 4.8 MB in every page, which then works offline and inside the
    MLflow UI), ``cdn`` (plotly's CDN, fetched once and cached by the browser), or the URL
    of a copy of ``plotly.min.js`` (e.g. on the team's server)."""
    value = (choice or os.environ.get("TUNING_PLOTLY_JS") or "inline").strip()
    if value == "inline":
        return True
    if value == "cdn" or value.endswith(".js"):
        return value
    raise ConfigurationError(f"plotly.js source must be 'inline', 'cdn' or the URL of a .js file, "
                             f"got {value!r}")


def importance(trials: Sequence[Point]) -> dict[str, float]:
    """Each hyperparameter's share in explaining the objective (random forest importances).

    Categorical values are ordinal-encoded, so a parameter keeps one column and one share.
    Empty below :data:`MIN_TRIALS_FOR_IMPORTANCE` trials, or when every trial scored the same.
    """
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE or len({t.value for t in trials}) < 2:
        return {}
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    if len(trials) > IMPORTANCE_SAMPLE:  # the forest's cost stays that of a study of this size
        rows = np.random.default_rng(0).choice(len(trials), IMPORTANCE_SAMPLE, replace=False)
        trials = [trials[i] for i in sorted(rows)]

    names = list(dict.fromkeys(name for t in trials for name in t.params))
    if not names:
        return {}
    x = np.column_stack([_encoded([t.params.get(name) for t in trials]) for name in names])
    forest = RandomForestRegressor(n_estimators=200, random_state=0)
    forest.fit(x, [t.value for t in trials])
    shares = {name: float(share) for name, share in zip(names, forest.feature_importances_, strict=True)}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def _newest_study(tracker: Tracker, experiment_id: str, experiment: str) -> Any:
    found = next(tracker.runs(experiment_id, f"tags.`{KIND_TAG}` = 'study'", limit=1,
                              order_by=["attributes.start_time DESC"]), None)
    if found is None:
        raise NoTrialsError(f"experiment {experiment!r} has no study run")
    return found


def _numbers(values: Sequence[str | None]) -> list[float] | None:
    """The values as floats (a missing one as NaN), or None when one is not a number."""
    try:
        return [math.nan if v is None else float(v) for v in values]
    except ValueError:
        return None


def _encoded(values: Sequence[str | None]) -> list[float]:
    numbers = _numbers(values)
    if numbers is not None:
        return numbers
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values]


def _running_best(report: Report) -> list[float]:
    pick = max if report.mode == "max" else min
    best: list[float] = []
    for point in report.trials:
        best.append(point.value if not best else pick(best[-1], point.value))
    return best


def _draw(report: Report, plotly_js: str | bool = True) -> list[Path]:
    """Write the PNGs, the HTML page and ``trials.csv`` into the report's folder."""
    files = [_objective_png(report), _params_png(report)]
    if report.importance:
        files.append(_importance_png(report))
    files += [_html(report, plotly_js), _csv(report)]
    return files


def _marker(report: Report) -> dict[str, Any]:
    """matplotlib's scatter style: thousands of default-sized points make one blot."""
    return {"s": 6, "alpha": 0.4, "linewidths": 0} if len(report.trials) > CROWDED else {}


# --- matplotlib: a Figure without pyplot draws with Agg, no GUI and no global state --------------

def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=110)
    return path


def _objective_png(report: Report) -> Path:
    figure = _figure(7, 4)
    axes = figure.add_subplot()
    numbers = [t.number for t in report.trials]
    axes.scatter(numbers, [t.value for t in report.trials], label="trial", zorder=3, **_marker(report))
    axes.step(numbers, _running_best(report), where="post", color="tab:orange", label="best so far")
    axes.set(xlabel="trial", ylabel=report.objective,
             title=f"{report.experiment}: {report.objective} by trial ({report.mode})")
    axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, report.folder / "objective.png")


def _params_png(report: Report) -> Path:
    from matplotlib.ticker import NullFormatter

    names = report.params
    columns = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    figure = _figure(4 * columns, 3.2 * rows)
    values = [t.value for t in report.trials]
    for index, name in enumerate(names, 1):
        axes = figure.add_subplot(rows, columns, index)
        raw = [t.params.get(name) for t in report.trials]
        scale, labels = report.axis(name)
        if scale == "category":  # one column of points per option, in the recipe's order
            axes.scatter([labels.index(str(v)) for v in raw], values, **_marker(report))
            axes.set_xticks(range(len(labels)), labels)
        else:
            axes.scatter(_numbers(raw), values, **_marker(report))
            axes.set_xscale(scale)
            if scale == "log":  # within a decade matplotlib labels every minor tick: they overlap
                axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set(xlabel=name, ylabel=report.objective)
        axes.grid(alpha=0.3)
    figure.suptitle(f"{report.experiment}: hyperparameters against {report.objective}")
    return _save(figure, report.folder / "params.png")


def _importance_png(report: Report) -> Path:
    figure = _figure(6, 0.5 * len(report.importance) + 1.5)
    axes = figure.add_subplot()
    names = list(report.importance)[::-1]  # barh draws bottom-up: the most important on top
    axes.barh(names, [report.importance[n] for n in names])
    axes.set(xlabel="importance (random forest)",
             title=f"what explains {report.objective}{_few(report)}")
    return _save(figure, report.folder / "importance.png")


# --- plotly: the same pictures, interactive, on one self-contained page ---------------------------

def _html(report: Report, plotly_js: str | bool = True) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    crowded = len(report.trials) > CROWDED
    scatter = go.Scattergl if crowded else go.Scatter  # WebGL: 10,000 points stay responsive
    size = {"size": 4, "opacity": 0.5} if crowded else {}
    hover = [f"trial {t.number}<br>run {t.run_id}<br>"
             + "<br>".join(f"{k}={v}" for k, v in t.params.items()) for t in report.trials]
    numbers = [t.number for t in report.trials]
    values = [t.value for t in report.trials]
    objective = go.Figure([
        scatter(x=numbers, y=values, mode="markers", name="trial", hovertext=hover, hoverinfo="text+y",
                marker=size),
        go.Scatter(x=numbers, y=_running_best(report), mode="lines", name="best so far",
                   line_shape="hv")])
    objective.update_layout(title=f"{report.objective} by trial ({report.mode})",
                            xaxis_title="trial", yaxis_title=report.objective)
    names = report.params
    columns = min(3, max(1, len(names)))
    params = make_subplots(rows=max(1, math.ceil(len(names) / columns)), cols=columns,
                           subplot_titles=names)
    for index, name in enumerate(names):
        raw = [t.params.get(name) for t in report.trials]
        scale, labels = report.axis(name)
        x = [str(v) for v in raw] if scale == "category" else _numbers(raw)
        row, col = index // columns + 1, index % columns + 1
        # The trial number only: the whole hover text again in every panel would multiply the page.
        params.add_trace(scatter(x=x, y=values, mode="markers", name=name, text=numbers,
                                 hovertemplate="trial %{text}<br>%{x}<br>%{y}<extra></extra>",
                                 showlegend=False, marker={"color": "#1f77b4", **size}),
                         row=row, col=col)
        axis = ({"type": "category", "categoryorder": "array", "categoryarray": labels}
                if scale == "category" else {"type": scale})
        params.update_xaxes(row=row, col=col, **axis)
    params.update_layout(title=f"hyperparameters against {report.objective}",
                         height=320 * math.ceil(max(1, len(names)) / columns))
    figures = [objective, params]
    if report.importance:
        names = list(report.importance)[::-1]
        figures.append(go.Figure(go.Bar(x=[report.importance[n] for n in names], y=names,
                                        orientation="h")))
        figures[-1].update_layout(title=f"hyperparameter importance for {report.objective} "
                                        f"(random forest){_few(report)}")
    parts = [figure.to_html(full_html=False, include_plotlyjs=plotly_js if index == 0 else False)
             for index, figure in enumerate(figures)]
    path = report.folder / "report.html"
    title = html.escape(report.experiment)
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                    f"<body><h1>{title}: study {report.study_run_id}</h1>"
                    f"<p>{len(report.trials)} finished trials, {report.failed} failed</p>"
                    + "".join(parts) + "</body></html>", encoding="utf-8")
    return path


def _few(report: Report) -> str:
    """A caution on an importance drawn from few trials: a forest on a dozen points mostly
    explains noise."""
    count = len(report.trials)
    return f" — from only {count} trials: a rough guide" if count < TRUSTED_IMPORTANCE else ""


def _csv(report: Report) -> Path:
    path = report.folder / "trials.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "run_id", report.objective, LOSS_METRIC, *report.params])
        for t in report.trials:
            writer.writerow([t.number, t.run_id, t.value, t.loss,
                             *(t.params.get(name, "") for name in report.params)])
    return path
