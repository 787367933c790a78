"""The ``tuning`` command: run a recipe, print its space, list the best trials.

Heavy imports (Keras, MLflow, hyperopt) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from tuning import DISTRIBUTION, signals

if TYPE_CHECKING:
    from tuning.cluster import Cluster
    from tuning.recipe import Recipe

console = Console(soft_wrap=True)  # long lines (commands, run ids) stay whole for copy-paste

tracking_uri_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
    help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here].")
debug_option = click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
# Options of both `run` and `pbt`, declared once.
experiment_option = click.option(
    "--experiment", help="MLflow experiment [default: recipe's EXPERIMENT, else MLFLOW_EXPERIMENT_NAME, "
    "else its file name].")
seed_option = click.option("--seed", type=int, help="Seed: the same seed samples the same parameters.")
objective_option = click.option(
    "--objective", help="Metric to optimise [default: accuracy on (x_test, y_test)].")
mode_option = click.option(
    "--mode", type=click.Choice(["min", "max"]), help="Minimise or maximise the objective.")
data_option = click.option(
    "--data", "data_path", type=click.Path(exists=True, dir_okay=False),
    help="A data file passed to the recipe's data(path), e.g. an .npz for offline use.")
no_model_option = click.option("--no-model", is_flag=True, help="Do not log each trial's model.")
backend_option = click.option(
    "--backend", type=click.Choice(["tensorflow", "jax", "torch"]), envvar="KERAS_BACKEND",
    help="Keras backend for the trials [env: KERAS_BACKEND; default: tensorflow].")
verbose_option = click.option("--verbose", is_flag=True,
                              help="Show Keras' own fit output instead of a progress bar.")


def friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """One readable line and exit code 1 for our errors; a traceback only with --debug."""
    @functools.wraps(command)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        from tuning.errors import TuningError

        try:
            return command(*args, **kwargs)
        except TuningError as error:  # ours; anything else is a bug, and shows its traceback
            if debug:
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: the running trial and the study run were marked KILLED", err=True)
            if command.__name__ == "run":
                click.echo(f"resume with: {resume_command()}", err=True)
            sys.exit(130)
    return debug_option(wrapper)


def experiment_named(command: Callable[..., Any]) -> Callable[..., Any]:
    """EXPERIMENT given positionally or as ``--experiment NAME`` (as ``tuning run`` takes it),
    else ``$MLFLOW_EXPERIMENT_NAME``."""
    @click.argument("experiment", required=False)
    @click.option("--experiment", "named", metavar="NAME", envvar="MLFLOW_EXPERIMENT_NAME",
                  help="The experiment, if not given positionally [default: $MLFLOW_EXPERIMENT_NAME].")
    @functools.wraps(command)
    def wrapper(*args: Any, experiment: str | None, named: str | None, **kwargs: Any) -> Any:
        from_environment = (click.get_current_context().get_parameter_source("named")
                            is click.core.ParameterSource.ENVIRONMENT)
        if experiment and named and experiment != named and not from_environment:
            raise click.UsageError(f"two experiments given: {experiment!r} and --experiment {named!r}")
        if not (experiment or named):
            raise click.UsageError(f"name the experiment: tuning {command.__name__} NAME "
                                   "(or --experiment NAME)")
        return command(*args, experiment=experiment or named, **kwargs)
    return wrapper


def resume_command() -> str:
    """The command line that was run, with --resume: what continues an interrupted study."""
    args = [a for a in sys.argv[1:] if a != "--resume"]
    return shlex.join(["tuning", *args, "--resume"])


def use_backend(backend: str) -> None:
    """Choose the Keras backend; it must happen before Keras is first imported."""
    import importlib.util

    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend:
        raise click.UsageError("--backend must be chosen before Keras is imported")
    if importlib.util.find_spec(backend) is None:
        raise click.UsageError(f"--backend {backend} needs the {backend} package: "
                               f"pip install '{DISTRIBUTION}[{backend}]'")
    os.environ["KERAS_BACKEND"] = backend


@click.group()
@click.version_option(package_name=DISTRIBUTION)
def main() -> None:
    """Hyperparameter search for templated Keras models, every trial tracked in MLflow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    # MLflow's "View run … at: http://…" line at every run's end would cut into the progress lines.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        logging.getLogger(chatty).setLevel(logging.WARNING)


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@tracking_uri_option
@experiment_option
@click.option("--max-evals", type=click.IntRange(min=1),
              help="Number of trials [default: 10; with --algo grid: every point].")
@click.option("--algo", type=click.Choice(["tpe", "rand", "anneal", "grid"]),
              help="Search algorithm; grid runs every combination of discrete markers [default: tpe].")
@click.option("--fraction", type=click.FloatRange(min=0, max=1, min_open=True),
              help="With --algo grid: run a random share F of the grid, no point twice.")
@seed_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Start no new trial after this many seconds (the running one finishes).")
@click.option("--early-stop", type=click.IntRange(min=1),
              help="Stop after N trials in a row without a better objective.")
@click.option("--target", type=float, help="Stop once the objective reaches this value.")
@click.option("--prune", type=click.Choice(["median", "hyperband", "none"]), default="none",
              show_default=True, help="Stop hopeless trials between epochs, judged against earlier trials.")
@click.option("--parallelism", type=click.IntRange(min=1),
              help="Run N trials at a time on Spark (local[N] unless --spark-master); needs a "
                   "tracking server.")
@click.option("--spark-master", help="Spark master URL of an existing cluster, e.g. spark://host:7077.")
@click.option("--threads-per-trial", type=click.IntRange(min=1),
              help="Threads each parallel trial may use [default: the cores / N on a local master].")
@objective_option
@mode_option
@data_option
@click.option("--max-epochs", type=click.IntRange(min=1),
              help="Train every fit for at most N epochs (quick checks) [env: TUNING_MAX_EPOCHS].")
@no_model_option
@click.option("--keep-models", metavar="all|best:N|none",
              help="Which trials keep their logged model: all (default), the N best so far (the "
                   "others' models are deleted from the store as better trials arrive), or none.")
@backend_option
@click.option("--patience", type=click.FloatRange(min=0), default=600, show_default=True,
              help="Seconds to keep retrying a tracking server that went away before stopping.")
@click.option("--trial-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds a trial may take; a slower one is stopped (runs trials in a worker process).")
@click.option("--trial-max-memory", type=click.FloatRange(min=0, min_open=True),
              help="Resident MB a trial may use; a larger one is stopped (runs trials in a worker process).")
@click.option("--isolate", is_flag=True,
              help="Run trials in worker processes (renewed every 20 trials) even without limits.")
@click.option("--resume", is_flag=True,
              help="Continue the newest unfinished study of this recipe, up to --max-evals trials in all.")
@click.option("--force", is_flag=True,
              help="With --resume: take over a study whose holder looks alive but is known to be gone.")
@verbose_option
@friendly
def run(recipe: str, tracking_uri: str | None, data_path: str | None, no_model: bool, verbose: bool,
        backend: str | None, **options: Any) -> None:
    """Search RECIPE's hyperparameters; every trial becomes an MLflow run."""
    from tuning.cluster import Cluster

    cluster = (Cluster(options["parallelism"], options["spark_master"], options["threads_per_trial"])
               if options["parallelism"] else None)
    with _loading(recipe, data_path, backend, cluster, tracking_uri) as loaded:
        from tuning.study import minimize

        study = minimize(loaded, tracking_uri=tracking_uri, log_model=not no_model,
                         progress=not verbose, **options)
    _print_study(study)


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@tracking_uri_option
@experiment_option
@click.option("--population", type=int, default=8, show_default=True,
              help="Members trained side by side (at least 2).")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Rounds; after each but the last, the bottom quarter copies the top quarter and perturbs.")
@click.option("--epochs-per-round", type=int,
              help="Epochs per round [default: the recipe fit's epochs // rounds, so the total stays].")
@seed_option
@objective_option
@mode_option
@data_option
@no_model_option
@backend_option
@verbose_option
@friendly
def pbt(recipe: str, tracking_uri: str | None, data_path: str | None, no_model: bool, verbose: bool,
        backend: str | None, **options: Any) -> None:
    """Population based training of RECIPE: members train in rounds, the worst copy the best.

    Learning rate, dropout and L1/L2 markers are perturbed; every member is an MLflow run.
    """
    with _loading(recipe, data_path, backend) as loaded:
        from tuning.population import pbt as train

        study = train(loaded, tracking_uri=tracking_uri, log_model=not no_model, progress=not verbose,
                      **options)
    _print_study(study)


@contextmanager
def _loading(recipe: str, data_path: str | None, backend: str | None, cluster: Cluster | None = None,
             tracking_uri: str | None = None) -> Iterator[Recipe]:
    """Choose the backend (before Keras is imported), let SIGTERM stop the study, load RECIPE;
    with a ``cluster``, Spark starts and its workers load RECIPE meanwhile, for the block."""
    if backend:
        use_backend(backend)  # before Spark starts too: its workers inherit the environment
    from tuning.cluster import starting_early

    signals.install()
    with starting_early(cluster, recipe, data_path, tracking_uri):
        from tuning.recipe import Recipe  # hyperopt, numpy, scipy: seconds, while Spark starts

        loaded = Recipe.from_file(recipe, tracking_uri)
        if data_path:
            loaded.use_data_file(data_path)
        signals.check()  # a signal during the imports above may have been dropped
        yield loaded


def _print_study(study: Any) -> None:
    """How a study ended, its best trial and how to look at it; exit 1 if every trial failed."""
    from tuning.tracking import ui_command

    best = study.best
    pruned = len(study.pruned)
    finished = len(study.trials) - len(study.failed) - pruned
    console.print(f"\nstudy [bold]{study.experiment}[/] ({study.run_id}): "
                  f"{finished} {_trials(finished)} finished, "
                  + (f"{pruned} pruned, " if pruned else "") + f"{len(study.failed)} failed; "
                  f"stopped: {study.stop_detail or study.stop_reason}")
    if best is None:
        first = study.failed[0].error if study.failed else "no trial ran"
        where = (f" (traceback in error.txt of run {study.failed[0].run_id})"
                 if study.failed and study.failed[0].run_id else "")
        raise click.ClickException(f"all {len(study.trials)} trials failed; first error: {first}{where}")
    table = Table("best trial", str(best.number), show_header=True)
    name, value = (("loss (model()'s) ▼", best.loss) if best.own_loss
                   else (study.objective.label, study.objective.loss(best.loss)))
    table.add_row(name, f"{value:.6g}")
    for name, value in best.params.items():
        table.add_row(name, str(value))
    table.add_row("run id", best.run_id)
    console.print(table)
    console.print(f"open the UI:      {ui_command(study.tracking_uri)}")
    if best.model_logged:  # never a reload command for a model the store does not have
        console.print(f"reload the model: {_reload(best.run_id, study.tracking_uri)}")
    else:
        console.print("the best trial logged no model (--no-model, or model() trained none)")


@main.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@friendly
def space(recipe: str) -> None:
    """Print RECIPE's search space: names, distributions, lines, grid size."""
    from tuning.errors import TemplateError
    from tuning.grid import grid_size
    from tuning.recipe import Recipe, run_file
    from tuning.template import Template

    signals.install()
    template = Template.from_file(recipe)
    try:  # markers of literals need nothing of the recipe: no Keras, no TensorFlow to import
        distributions = template.distributions()
    except TemplateError:  # their arguments use the recipe's names: run it, imports and all
        with console.status("running the recipe's imports (Keras, TensorFlow) to read its markers …"):
            Recipe.from_file(recipe)  # reports a recipe without data() or model() as `run` would
            distributions = template.distributions(run_file(template))
    lines = {m.name: m.line for m in template.markers}
    table = Table("name", "distribution", "line", "values")
    for name, d in distributions.items():
        grid = d.grid
        values = (d.span or "continuous") if grid is None else (
            ", ".join(map(str, grid)) if len(grid) <= 8 else f"{len(grid)} values")
        table.add_row(name, d.describe() + (" → int" if d.is_integer else ""), str(lines[name]), values)
    console.print(table)
    size = grid_size(distributions)
    console.print(f"grid size: {size}" if size is not None
                  else "grid size: unbounded (some parameters are continuous)")


@main.command()
@experiment_named
@tracking_uri_option
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--register", metavar="NAME",
              help="Register the best trial's model as a new version of model NAME, alias 'champion'.")
@friendly
def best(experiment: str, tracking_uri: str | None, top: int, register: str | None = None) -> None:
    """List EXPERIMENT's best finished trials, sorted by the objective."""
    from tuning.best import best_runs, objectives
    from tuning.fluent import resolve_uri
    from tuning.tracking import LOSS_METRIC, OWN_LOSS_TAG

    with console.status(f"reading the trials of {experiment} …"):
        runs = best_runs(experiment, top, tracking_uri)
        judged = objectives(runs, tracking_uri)  # each run's study's objective
    table = Table("#", "run id", "objective", "params")
    table.columns[1].no_wrap = True  # ids are copied from here: never cut them
    table.columns[3].overflow = "fold"  # every value shown, wrapped if need be
    for rank, run in enumerate(runs, 1):
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(run.data.params.items()))
        shown = judged[run.info.run_id].shown(run.data.metrics.get(LOSS_METRIC, float("nan")),
                                             run.data.tags.get(OWN_LOSS_TAG) == "true")
        table.add_row(str(rank), run.info.run_id, shown, params)
    console.print(table)
    if runs[0].outputs and runs[0].outputs.model_outputs:
        console.print(f"reload the best: {_reload(runs[0].info.run_id, resolve_uri(tracking_uri))}")
    if register:
        from tuning.best import CHAMPION, register_best

        version = register_best(experiment, register, tracking_uri)
        console.print(f"registered run {version.run_id} as model {register!r} version {version.version}, "
                      f"alias {CHAMPION!r}: tuning.load_best('models:/{register}@{CHAMPION}')")


@main.command()
@experiment_named
@tracking_uri_option
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the plots [default: EXPERIMENT-report].")
@click.option("--study", metavar="RUN_ID", help="The study run to report on [default: the newest].")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--log", "log_to_run", is_flag=True, help="Also attach the plots to the study run.")
@click.option("--plotly-js", metavar="inline|cdn|URL", envvar="TUNING_PLOTLY_JS",
              help="Where report.html gets plotly.js: inline (default; 4.8 MB, works offline), cdn, "
                   "or the URL of a copy [env: TUNING_PLOTLY_JS, which a study's own report reads too].")
@friendly
def report(experiment: str, tracking_uri: str | None, out: str | None, study: str | None, top: int,
           log_to_run: bool, plotly_js: str | None) -> None:
    """Plot a study of EXPERIMENT (objective by trial, hyperparameters, importance); list its best trials."""
    from tuning.report import log_report, study_report

    with console.status(f"reading and plotting the study of {experiment} …"):
        made = study_report(experiment, tracking_uri, out or f"{experiment}-report", study=study,
                            plotly_js=plotly_js)
    console.print(made.summary(top), highlight=False, markup=False)
    console.print(f"\n{len(made.trials)} finished trials, {made.failed} failed; wrote:")
    for path in made.files:
        console.print(f"  {path}", highlight=False, markup=False)
    if log_to_run:
        log_report(made, tracking_uri)
        console.print(f"attached to study run {made.study_run_id} under report/")


@main.command()
@tracking_uri_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(tracking_uri: str | None, host: str, port: int) -> None:
    """Start the MLflow UI on the store `tuning run` uses (here: sqlite:///mlflow.db); Ctrl-C stops it."""
    from tuning.ui import serve

    sys.exit(serve(tracking_uri, host, port, console.print))


def _reload(run_id: str, uri: str) -> str:
    """The Python line that reloads a trial's model, for this store."""
    from tuning.fluent import default_uri

    where = "" if uri == default_uri() else f", tracking_uri={uri!r}"
    return f"import tuning; model = tuning.load_best({run_id!r}{where})"


def _trials(count: int) -> str:
    return "trial" if count == 1 else "trials"


def _short(text: str) -> str:
    """Params as MLflow stores them (strings), floats shortened for reading."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() else f"{number:.4g}"
