"""A recipe: the compiled template, the namespace it runs in, ``data`` and ``model``.

A recipe is either a file (which may hold ``<<…>>`` markers and so is not importable:
we compile and execute it ourselves) or a pair of function objects written with
hyperas' ``{{…}}`` markers. Optional module-level constants give defaults that CLI flags
and keyword arguments override:

============== ===================================== ==============
constant       meaning                               default
============== ===================================== ==============
``EXPERIMENT`` MLflow experiment name                 the file's stem
``MAX_EVALS``  number of trials                       10
``ALGO``       ``"tpe"``, ``"rand"`` or ``"anneal"``  ``"tpe"``
``SEED``       seed of the search                     random (logged)
``OBJECTIVE``  metric to optimise                     ``"accuracy"``
``MODE``       ``"max"`` or ``"min"``                 from the metric
============== ===================================== ==============
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import contextvars
import importlib.machinery
import inspect
import itertools
import logging
import os
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.distributions import complete_hyperas
from tuning.errors import RecipeError, TemplateError
from tuning.quiet import tensorflow_start_up
from tuning.template import PARAM_FUNCTION, Template, global_names, param_value, read_source

DEFAULT_NAMES = ("EXPERIMENT", "MAX_EVALS", "ALGO", "SEED", "OBJECTIVE", "MODE")
MODULE_NAME = "__tuning_recipe__"  # a recipe file's __name__: its __main__ part does not run
_KERAS_PACKAGES = ("keras", "tensorflow", "tf_keras", "builtins")  # objects Keras finds itself
# While a file loads: when its load began (ms since the epoch, MLflow's clock for runs).
_LOADING: contextvars.ContextVar[int | None] = contextvars.ContextVar("tuning_recipe_loading", default=None)
_log = logging.getLogger("tuning")


class _SearchAtModuleLevel(BaseException):
    """Raised where a recipe file being loaded starts a search of its own (a script whose
    ``optim.minimize(...)`` has no ``if __name__ == "__main__":`` guard): the file's
    functions are all there by then. A BaseException, so the script's ``except Exception``
    does not swallow it."""


@dataclass
class Recipe:
    """What a study needs from the user: the template, ``data()`` and ``model(...)``."""

    template: Template
    namespace: dict[str, Any]
    model: Callable[..., Any]
    data: Callable[[], Any] | None
    defaults: dict[str, Any] = field(default_factory=dict)
    data_path: str | None = None  # the file given with --data, if any
    data_args: tuple[Any, ...] = ()  # what data() is called with (--data, hyperas' data_args)
    notebook: str | None = None  # hyperas' notebook_name=, for code defined in a notebook's cells

    @property
    def name(self) -> str:
        """The default experiment name: the file's stem; for code without a file of its own
        (a notebook cell, a string) the notebook's name (``notebook_name=``, else the one
        Jupyter gives its kernels in ``JPY_SESSION_NAME``), else the function's name."""
        path = Path(self.template.filename)
        if self.template.filename.startswith("<") or "ipykernel" in str(path) or path.suffix != ".py":
            notebook = self.notebook or os.environ.get("JPY_SESSION_NAME")
            return Path(notebook).stem if notebook else self.template.function
        return path.stem

    @classmethod
    def of(cls, recipe: str | Path | Callable[..., Any] | Recipe,
           data: Callable[[], Any] | None = None, tracking_uri: str | None = None) -> Recipe:
        """A recipe file's path, a ``{{…}}``-templated ``model`` function or a Recipe, as a
        Recipe; ``data``, if given, replaces its ``data()``."""
        if isinstance(recipe, str | Path):
            recipe = cls.from_file(recipe, tracking_uri)
        elif not isinstance(recipe, Recipe):
            recipe = cls.from_functions(recipe, data)
        if data is not None:
            recipe.data = data
        return recipe

    @classmethod
    def from_file(cls, path: str | Path, tracking_uri: str | None = None) -> Recipe:
        """Compile and execute a recipe file; it must define ``data()`` and ``model(...)``.
        With ``tracking_uri`` (the study's store) the file's own MLflow calls go there."""
        _not_while_loading()
        return cls.from_template(Template.from_file(path), tracking_uri=tracking_uri)

    @classmethod
    def from_template(cls, template: Template, first_load: bool = True, data: str | None = None,
                      tracking_uri: str | None = None) -> Recipe:
        """Execute a compiled recipe file, or (``first_load`` False) its source sent to
        another process, which may be on a host that lacks the file; ``template.function``
        and ``data`` (or ``template.data_function``) name its model and data functions."""
        path = template.filename
        data = data or template.data_function
        namespace = run_file(template, first_load, tracking_uri)
        missing = [n for n in (data, template.function) if not callable(namespace.get(n))]
        if missing:
            defined = sorted(k for k, v in own_objects(namespace).items() if inspect.isfunction(v))
            raise RecipeError(
                f"{path}: a recipe defines data() and model(x_train, y_train, x_test, y_test); "
                f"{' and '.join(m + '()' for m in missing)} missing (functions found: "
                f"{', '.join(defined) or 'none'})")
        defaults = {k: namespace[k] for k in DEFAULT_NAMES if k in namespace}
        for name, expression in template.call_defaults:  # the script's optim.minimize(max_evals=3, …)
            if name not in defaults:
                with contextlib.suppress(Exception):  # max_evals=args.evals: known only when it runs
                    defaults[name] = eval(expression, dict(namespace))  # noqa: S307 - the user's own code
        return cls(template, namespace, namespace[template.function], namespace[data], defaults)

    @classmethod
    def from_functions(cls, model: Callable[..., Any], data: Callable[[], Any] | None = None,
                       functions: list[Callable[..., Any]] | None = None) -> Recipe:
        """Compile a ``{{…}}``-templated function defined in a script or notebook cell."""
        _not_while_loading()
        template = Template.from_function(model, [f.__name__ for f in functions or ()])
        # The function's own globals (imports, helpers), its closure, and our lookup.
        namespace = dict(getattr(model, "__globals__", {}))
        closure = zip(model.__code__.co_freevars, model.__closure__ or (), strict=True)
        namespace.update({name: cell.cell_contents for name, cell in closure})
        namespace.update({f.__name__: f for f in functions or ()})
        namespace[PARAM_FUNCTION] = param_value
        _execute(template, namespace)
        return cls(template, namespace, namespace[template.function], data)

    def file_source(self) -> str:
        """The whole recipe file's text, which another process (a worker, a Spark executor
        on a host without the file) runs as the recipe; the file is not read again there."""
        filename = self.template.filename
        if self.namespace.get("__name__") == MODULE_NAME:
            return self.template.source  # compiled from the whole file
        try:  # functions of a script (hyperas' style): the script is the recipe
            if not filename.startswith("<") and "ipykernel" not in filename:
                return read_source(filename)
        except TemplateError:
            pass
        raise RecipeError("trials in other processes (--trial-timeout, --trial-max-memory, --isolate, "
                          "--parallelism) need a recipe file; this model was not read from one")

    def data_name(self) -> str:
        """The name ``data`` has in the recipe's namespace: what another process, which runs
        the file, looks it up by (``from loaders import digits as data`` is ``data``)."""
        names = [name for name, value in self.namespace.items() if value is self.data]
        return names[0] if names and self.template.data_function not in names else self.template.data_function

    def custom_objects(self) -> dict[str, Any]:
        """What Keras needs to reload a model the recipe built: see :func:`custom_objects`."""
        return custom_objects(self.namespace)

    def use_data_file(self, path: str) -> None:
        """Have ``data()`` read this file (``--data PATH``); data() must take ``path``."""
        try:
            inspect.signature(self.data).bind(path)  # type: ignore[arg-type]
        except TypeError:
            raise RecipeError(f"{self.template.filename}: --data needs a data(path=None) that "
                              "takes the file's path; this recipe's data() takes no argument") from None
        self.data_args = (path,)
        self.data_path = path

    def load_data(self) -> tuple[Any, ...]:
        """Call ``data()`` once; its result is passed to every trial's ``model(...)``.

        As in hyperas, which pastes the body of ``data()`` above the model, the names
        ``data()`` defines (``nb_classes``, ``maxlen`` …) become globals of the model.
        """
        if self.data is None:
            raise RecipeError("no data() given: pass data=… or define data() in the recipe")
        try:
            result, names = _call_keeping_locals(self.data, self.data_args)
        except Exception as error:
            raise RecipeError(f"data() raised {type(error).__name__}: {error}\n"
                              f"{_user_frames(error, self.template.filename)}") from error
        # Only the names the recipe's functions read: a large intermediate of data() is
        # not kept alive for the whole study.
        wanted = _global_names(self.namespace) - {self.template.function, "data", PARAM_FUNCTION}
        self.namespace.update({k: v for k, v in names.items() if k in wanted})
        if isinstance(result, dict):  # its keys name values as data()'s variables do
            names.update((k, v) for k, v in result.items() if isinstance(k, str))
        return self._arguments(result if isinstance(result, tuple) else (result,), names)

    def _arguments(self, returned: tuple[Any, ...], variables: dict[str, Any]) -> tuple[Any, ...]:
        """What ``model`` is called with: what ``data()`` returned, one value per parameter
        in that order; or, as hyperas runs ``data()``'s body above the model's (neither
        signature counts there), ``data()``'s variables of the parameters' names, when the
        values returned do not fit the parameters (more of them, or a ``model()`` without
        parameters) or are those variables in another order."""
        signature = inspect.signature(self.model)
        positional = [p for p in signature.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        named = [p.name for p in itertools.takewhile(lambda p: p.name in variables, positional)]
        by_name = tuple(variables[name] for name in named)
        fits = _fits(signature, returned)  # checked once here, rather than in every trial
        if _fits(signature, by_name):
            reordered = bool(by_name) and sorted(map(id, by_name)) == sorted(map(id, returned))
            if reordered or not fits:
                return by_name
        if fits:
            return returned
        what = f"{len(returned)} item(s)" if len(returned) != 1 else f"one {type(returned[0]).__name__}"
        raise RecipeError(f"{self.template.filename}: data() returned {what}, but "
                          f"{self.template.function}({', '.join(signature.parameters)}) takes them as "
                          "its arguments: return one value per argument, in that order (or name the "
                          "parameters after data()'s variables)")

    def test_data(self, data: tuple[Any, ...]) -> tuple[Any, Any] | None:
        """``(x_test, y_test)`` as the model function names them (a model without
        parameters reads them as globals, from ``data()``), else items 3 and 4."""
        parameters = inspect.signature(self.model).parameters  # (those with defaults may get none)
        names = zip(parameters, data, strict=False) if data else self.namespace.items()
        by_name = {name.lower(): value for name, value in names}
        for x, y in (("x_test", "y_test"), ("x_val", "y_val"), ("x_valid", "y_valid")):
            if x in by_name and y in by_name:
                return by_name[x], by_name[y]
        return (data[2], data[3]) if len(data) == 4 else None


@dataclass(frozen=True)
class RecipeSource:
    """A recipe as another process (a worker, a Spark executor) loads it: its text, not its
    file, which a host of a cluster may lack; plain, picklable values."""

    filename: str  # in tracebacks, and the folder of the recipe's own imports
    source: str
    functions: tuple[str, str]  # the names of its model and data functions (a script's may be any)
    data_path: str | None = None  # --data

    @classmethod
    def of(cls, recipe: Recipe) -> RecipeSource:
        """The source of a loaded recipe, for the processes that run its trials."""
        template = recipe.template
        return cls(template.filename, recipe.file_source(), (template.function, recipe.data_name()),
                   recipe.data_path)

    @classmethod
    def from_file(cls, path: str | Path, data_path: str | None = None) -> RecipeSource:
        """The source that :meth:`of` gives once the file is loaded (a Spark worker can load it
        while this process still imports it), for a file whose functions keep their names."""
        template = Template.from_file(path)
        return cls(template.filename, template.source, (template.function, template.data_function), data_path)

    def load(self, tracking_uri: str) -> tuple[Recipe, tuple[Any, ...]]:
        """The recipe and what its ``data()`` returned, loaded once in this process for the
        study on ``tracking_uri``."""
        if self not in _LOADED:
            _LOADED.clear()  # another study's recipe: its data would only take memory
            model, data = self.functions
            recipe = Recipe.from_template(Template.from_source(self.source, self.filename, model),
                                          first_load=False, data=data, tracking_uri=tracking_uri)
            if self.data_path:
                recipe.use_data_file(self.data_path)
            _LOADED[self] = recipe, recipe.load_data()
        return _LOADED[self]


_LOADED: dict[RecipeSource, tuple[Recipe, tuple[Any, ...]]] = {}


def run_file(template: Template, first_load: bool = True, tracking_uri: str | None = None) -> dict[str, Any]:
    """Execute a compiled recipe file as a module of its own (not ``__main__``: a script's
    ``if __name__ == "__main__":`` part does not run); its namespace. The file's own
    module-level MLflow calls (``set_experiment``, a ``with start_run():`` around its
    search) go to ``tracking_uri``, if given: the study's store, not ``./mlflow.db``.

    The file's name is checked against installed modules on its first load only: another
    process inherits the first one's ``sys.path``, earlier recipes' folders included, and
    would take a recipe of the same name there for an installed module.
    """
    path = Path(template.filename).resolve()
    namespace: dict[str, Any] = {"__name__": MODULE_NAME, "__file__": str(path),
                                 "__builtins__": builtins, PARAM_FUNCTION: param_value}
    if str(path.parent) not in sys.path:  # local imports work as when the file is run as a script
        if first_load:
            _check_not_shadowing(path)
        sys.path.insert(0, str(path.parent))
        _RECIPE_FOLDERS.add(path.parent)
    complete_hyperas()  # an older hyperas script's `from hyperas.distributions import conditional`
    try:
        with tensorflow_start_up(), _own_mlflow_runs(tracking_uri) as started:  # the recipe's `import keras`
            loading = _LOADING.set(started)
            try:
                _execute(template, namespace)
            finally:
                _LOADING.reset(loading)
    except _SearchAtModuleLevel:
        pass  # what follows would run a search of its own, not the one loading the file is for
    return namespace


def _not_while_loading() -> None:
    """Stop a recipe file that starts a search while :func:`run_file` loads it (see
    :class:`_SearchAtModuleLevel`)."""
    started = _LOADING.get()
    if started is not None:
        _close_runs_opened(started)  # before the script's `with mlflow.start_run():` ends them FAILED
        raise _SearchAtModuleLevel


@contextlib.contextmanager
def _own_mlflow_runs(tracking_uri: str | None) -> Iterator[int]:
    """Give a file being loaded MLflow's stack of active runs, and ``tracking_uri`` if
    given, to itself; yield when it began.

    A run active in the caller (a notebook's ``with mlflow.start_run():`` around
    ``load_best``) is set aside, or the script's own module-level ``mlflow.start_run()``
    would refuse to start; runs the file leaves open are closed (:func:`_close_runs_opened`)
    and the caller's put back, with ``MLFLOW_RUN_ID`` (which MLflow unsets as it resumes
    or ends the run it names).
    """
    fluent = _mlflow_fluent()
    outer = fluent._active_run_stack.get() if fluent else None
    if fluent:
        fluent._active_run_stack.set([])
    run_id_variable = os.environ.get("MLFLOW_RUN_ID")
    started = int(time.time() * 1000)
    try:
        with contextlib.ExitStack() as uri:
            if tracking_uri:
                from tuning.fluent import using_uri  # imports MLflow: only for a store given

                uri.enter_context(using_uri(tracking_uri))
            try:
                yield started
            finally:
                _close_runs_opened(started)  # in the store the file's runs went to
    finally:
        if fluent:
            fluent._active_run_stack.set(outer)
        if run_id_variable is not None:
            os.environ["MLFLOW_RUN_ID"] = run_id_variable


def _close_runs_opened(started: int) -> None:
    """Close the runs a file being loaded has open (a script's module-level ``with
    mlflow.start_run():`` around its search): loading the file is not the script's own run.

    A run the load created is ended and deleted (MLflow keeps deleted runs restorable), so
    that each load (the CLI's, each Spark worker's, ``load_best``) leaves no empty FAILED run
    behind; a run it resumed (the ``MLFLOW_RUN_ID`` of an ``mlflow run`` project) is only
    taken off the stack, open as it was.
    """
    if (fluent := _mlflow_fluent()) is None:
        return
    from mlflow import MlflowClient

    stack = fluent._active_run_stack.get()
    while stack:
        run = stack[-1]
        if run.info.start_time < started:
            stack.pop()
            continue
        try:
            fluent.end_run()  # off the stack first, whatever the store says
            MlflowClient().delete_run(run.info.run_id)
        except Exception as error:  # noqa: BLE001 - a run left behind is no reason to stop
            _log.warning("could not delete run %s, which loading the file opened: %s", run.info.run_id, error)


def _mlflow_fluent() -> Any:
    """MLflow's fluent module, if anything in this process has imported MLflow."""
    return sys.modules.get("mlflow.tracking.fluent")


_RECIPE_FOLDERS: set[Path] = set()  # put on sys.path for recipes' own imports


def _check_not_shadowing(path: Path) -> None:
    """With its folder first on ``sys.path``, a recipe named ``keras.py`` or ``six.py`` would
    be what ``import keras`` (the recipe's own, or TensorFlow's ``import six``) finds."""
    if not path.stem.isidentifier() or path.stem in sys.builtin_module_names:  # builtins come first
        return
    ours = _RECIPE_FOLDERS | {path.parent}  # another recipe of the same name is no clash
    installed = [p for p in sys.path if Path(p or ".").resolve() not in ours]
    found = importlib.machinery.PathFinder.find_spec(path.stem, installed)
    for finder in sys.meta_path:  # editable installs have finders of their own
        if found is None and finder is not importlib.machinery.PathFinder:
            found = getattr(finder, "find_spec", lambda *_: None)(path.stem, None)
    if found is not None:
        where = f" ({found.origin})" if found.origin not in (None, "frozen") else ""
        raise RecipeError(f"{path}: the recipe's file name shadows the installed module "
                          f"'{path.stem}'{where}: `import {path.stem}` would import the recipe. "
                          f"Rename the file, e.g. to {path.stem}_recipe.py")


def own_objects(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The functions and classes defined in the module whose namespace this is."""
    module = namespace.get("__name__")
    return {name: value for name, value in namespace.items()
            if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module}


def custom_objects(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The functions and classes a recipe defines or imports from the user's own modules (a
    loss, a metric, a layer, a ``Lambda``'s function; ``from metrics import f1``), by their
    names in the recipe and their own: what Keras needs to reload a model that uses them.
    Not those of installed packages: Keras finds its own, and a ``mse`` of scikit-learn's
    would take the place of Keras' ``"mse"``."""
    objects: dict[str, Any] = {}
    for name, value in namespace.items():
        if (inspect.isfunction(value) or inspect.isclass(value)) and _users(value, namespace):
            objects.setdefault(value.__name__, value)  # the name Keras saved it under
            objects[name] = value
    return objects


_INSTALLED = tuple({os.path.join(sysconfig.get_paths()[key], "")
                    for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _users(value: Any, namespace: Mapping[str, Any]) -> bool:
    """Whether ``value`` is the recipe's own, or comes from a module outside installed packages."""
    module = getattr(value, "__module__", None) or ""
    if module == namespace.get("__name__"):
        return True
    file = getattr(sys.modules.get(module), "__file__", None)
    return (file is not None and module.split(".")[0] not in _KERAS_PACKAGES
            and not os.path.abspath(file).startswith(_INSTALLED))


def _fits(signature: inspect.Signature, values: tuple[Any, ...]) -> bool:
    try:
        signature.bind(*values)
    except TypeError:
        return False
    return True


def _global_names(namespace: dict[str, Any]) -> set[str]:
    """The global names read by the functions that run in ``namespace``."""
    functions = [f for f in namespace.values() if inspect.isfunction(f) and f.__globals__ is namespace]
    return set().union(*(global_names(f.__code__) for f in functions))


def _call_keeping_locals(function: Callable[..., Any], args: tuple[Any, ...]
                         ) -> tuple[Any, dict[str, Any]]:
    """``function(*args)`` and the local variables it ended with.

    A profile hook sees the function's frame as it returns; it costs a call per Python
    call inside ``data()``, once per study. (A trace hook would also do, but would take
    the place of a debugger's or coverage's.)
    """
    code = getattr(function, "__code__", None)
    names: dict[str, Any] = {}

    def watch(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is code:
            names.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(watch if code is not None else previous)
    try:
        return function(*args), names
    finally:
        sys.setprofile(previous)


def _execute(template: Template, namespace: dict[str, Any]) -> None:
    try:
        exec(template.compile(), namespace)  # noqa: S102 - the user's own recipe
    except Exception as error:
        line = _after_main_block(template, error)
        if line is not None:  # the script's own run, which hyperas never runs either
            _log.warning("%s:%d reads %r, which the script's `if __name__ == \"__main__\":` block makes; "
                         "that block does not run here, so loading the file stops there",
                         template.filename, line, getattr(error, "name", None))
            return
        raise RecipeError(f"{template.filename}: running the recipe raised "
                          f"{type(error).__name__}: {error}\n"
                          f"{_user_frames(error, template.filename)}") from error


def _after_main_block(template: Template, error: BaseException) -> int | None:
    """The module-level line that raised ``error``, if it follows the script's ``if __name__
    == "__main__":`` block and reads a name that block assigns (``print(best_run)``): a line
    of the script's own run, which fails when the block does not run."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
             if f.filename == template.filename and f.name == "<module>"]
    if not isinstance(error, NameError) or not lines or lines[0] is None:
        return None
    guards = [node for node in ast.parse(template.code).body
              if isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"')
              in ('__name__ == "__main__"', '"__main__" == __name__')]
    made = {n.id for guard in guards if guard.lineno < lines[0] for statement in guard.body
            for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return lines[0] if error.name in made else None


def _user_frames(error: BaseException, filename: str) -> str:
    """The traceback lines that point into the user's recipe, for a short error message."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    return "".join(traceback.format_list(frames)).rstrip()
