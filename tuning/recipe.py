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

import builtins
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.errors import RecipeError
from tuning.template import PARAM_FUNCTION, Template, param_value

DEFAULT_NAMES = ("EXPERIMENT", "MAX_EVALS", "ALGO", "SEED", "OBJECTIVE", "MODE")


@dataclass
class Recipe:
    """What a study needs from the user: the template, ``data()`` and ``model(...)``."""

    template: Template
    namespace: dict[str, Any]
    model: Callable[..., Any]
    data: Callable[[], Any] | None
    defaults: dict[str, Any] = field(default_factory=dict)
    data_path: str | None = None  # the file given with --data, if any

    @property
    def name(self) -> str:
        """The default experiment name: the file's stem, or the function's name for code
        without a file of its own (a string, a notebook cell)."""
        path = Path(self.template.filename)
        if self.template.filename.startswith("<") or "ipykernel" in str(path) or path.suffix != ".py":
            return self.template.function
        return path.stem

    @classmethod
    def of(cls, recipe: str | Path | Callable[..., Any] | Recipe,
           data: Callable[[], Any] | None = None) -> Recipe:
        """A recipe file's path, a ``{{…}}``-templated ``model`` function or a Recipe, as a
        Recipe; ``data``, if given, replaces its ``data()``."""
        if isinstance(recipe, str | Path):
            recipe = cls.from_file(recipe)
        elif not isinstance(recipe, Recipe):
            recipe = cls.from_functions(recipe, data)
        if data is not None:
            recipe.data = data
        return recipe

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        """Compile and execute a recipe file; it must define ``data()`` and ``model(...)``."""
        path = Path(path)
        template = Template.from_file(path)
        namespace: dict[str, Any] = {"__name__": "__tuning_recipe__", "__file__": str(path.resolve()),
                                     "__builtins__": builtins, PARAM_FUNCTION: param_value}
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # local imports work as when the file is run as a script
            sys.path.insert(0, folder)
        _execute(template, namespace)
        missing = [n for n in ("data", "model") if not callable(namespace.get(n))]
        if missing:
            defined = sorted(k for k, v in namespace.items() if inspect.isfunction(v)
                             and v.__module__ == "__tuning_recipe__")
            raise RecipeError(
                f"{path}: a recipe defines data() and model(x_train, y_train, x_test, y_test); "
                f"{' and '.join(m + '()' for m in missing)} missing (functions found: "
                f"{', '.join(defined) or 'none'})")
        defaults = {k: namespace[k] for k in DEFAULT_NAMES if k in namespace}
        return cls(template, namespace, namespace["model"], namespace["data"], defaults)

    @classmethod
    def from_functions(cls, model: Callable[..., Any], data: Callable[[], Any] | None = None,
                       functions: list[Callable[..., Any]] | None = None) -> Recipe:
        """Compile a ``{{…}}``-templated function defined in a script or notebook cell."""
        template = Template.from_function(model)
        # The function's own globals (imports, helpers), its closure, and our lookup.
        namespace = dict(getattr(model, "__globals__", {}))
        closure = zip(model.__code__.co_freevars, model.__closure__ or (), strict=True)
        namespace.update({name: cell.cell_contents for name, cell in closure})
        namespace.update({f.__name__: f for f in functions or ()})
        namespace[PARAM_FUNCTION] = param_value
        _execute(template, namespace)
        return cls(template, namespace, namespace[template.function], data)

    def use_data_file(self, path: str) -> None:
        """Have ``data()`` read this file (``--data PATH``); data() must take ``path``."""
        data = self.data
        try:
            inspect.signature(data).bind(path)  # type: ignore[arg-type]
        except TypeError:
            raise RecipeError(f"{self.template.filename}: --data needs a data(path=None) that "
                              "takes the file's path; this recipe's data() takes no argument") from None
        self.data = lambda: data(path)  # type: ignore[misc]
        self.data_path = path

    def load_data(self) -> tuple[Any, ...]:
        """Call ``data()`` once; its result is passed to every trial's ``model(...)``."""
        if self.data is None:
            raise RecipeError("no data() given: pass data=… or define data() in the recipe")
        try:
            result = self.data()
        except Exception as error:
            raise RecipeError(f"data() raised {type(error).__name__}: {error}\n"
                              f"{_user_frames(error, self.template.filename)}") from error
        return result if isinstance(result, tuple) else (result,)

    def test_data(self, data: tuple[Any, ...]) -> tuple[Any, Any] | None:
        """``(x_test, y_test)`` as the model function names them, else items 3 and 4."""
        params = list(inspect.signature(self.model).parameters)
        by_name = {p.lower(): i for i, p in enumerate(params) if i < len(data)}
        for x, y in (("x_test", "y_test"), ("x_val", "y_val"), ("x_valid", "y_valid")):
            if x in by_name and y in by_name:
                return data[by_name[x]], data[by_name[y]]
        return (data[2], data[3]) if len(data) == 4 else None


def _execute(template: Template, namespace: Mapping[str, Any]) -> None:
    try:
        exec(template.compile(), namespace)  # noqa: S102 - the user's own recipe
    except Exception as error:
        raise RecipeError(f"{template.filename}: running the recipe raised "
                          f"{type(error).__name__}: {error}\n"
                          f"{_user_frames(error, template.filename)}") from error


def _user_frames(error: BaseException, filename: str) -> str:
    """The traceback lines that point into the user's recipe, for a short error message."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    return "".join(traceback.format_list(frames)).rstrip()
