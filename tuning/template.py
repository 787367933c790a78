"""The template compiler: markers in a recipe become a hyperopt space and plain Python.

A marker is ``<<dist(args)>>`` (native) or ``{{dist(args)}}`` (hyperas). Markers are
found with Python's tokenizer, so text inside strings and comments is never touched.
Each marker is replaced by a lookup of the trial's value, ``__tuning_param__("name")``,
and the rewritten source keeps every line number: a traceback from a trial points at
the user's own recipe line.

Example::

    >>> t = Template.from_source("def model(x):\\n    return Dense(<<choice([8, 16])>>)\\n")
    >>> [m.name for m in t.markers]
    ['Dense']
    >>> t.code.splitlines()[1]
    '    return Dense(__tuning_param__("Dense"))'
"""

from __future__ import annotations

import ast
import builtins
import contextvars
import difflib
import dis
import functools
import inspect
import io
import keyword
import linecache
import os
import textwrap
import tokenize
import types
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.distributions import NAMES, Distribution, DistributionError
from tuning.errors import TemplateError

__all__ = ["Marker", "Template", "assigned", "param_value"]  # the rest is this package's own

PARAM_FUNCTION = "__tuning_param__"

# Values of the trial being run in this thread/context. A ContextVar, not a module
# global, so that trials running in parallel threads each see their own values.
_VALUES: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "tuning_values", default=None
)


def param_value(name: str, builders: Mapping[str, Callable[[], Any]] | None = None) -> Any:
    """The trial's value of marker ``name``.

    ``builders`` are the options of a ``choice`` that construct an object
    (``Dropout(0.5)``, ``SGD(0.01)``), by their text: the value of such an option is its
    text, and the object is built here, at the marker, for every trial. Built once with
    the space (as hyperas does), one layer object would serve every trial: its name clashes
    after ``clear_session()`` and its weights or optimizer state leak between trials.
    """
    values = _VALUES.get()
    if values is None:
        raise RuntimeError(
            f"hyperparameter {name!r} was read outside a trial; run the model through "
            "tuning.minimize / `tuning run`, or wrap the call in `with tuning.assigned({...}):`"
        )
    value = values[name]
    if builders and isinstance(value, str) and value in builders:
        return builders[value]()
    return value


@contextmanager
def assigned(values: Mapping[str, Any]) -> Iterator[None]:
    """Give the markers of compiled model functions these values while the block runs."""
    token = _VALUES.set(dict(values))
    try:
        yield
    finally:
        _VALUES.reset(token)


def read_source(path: str | Path) -> str:
    """A Python file's text, decoded as Python decodes it: UTF-8 unless a ``# -*- coding: … -*-``
    line (or a BOM) says otherwise."""
    if Path(path).suffix == ".ipynb":  # JSON, which would run as Python until a `false`
        raise TemplateError("a notebook is not a recipe file: run its cells in Jupyter with `from "
                            "tuning import optim` (every search is tracked there), or export it with "
                            f"`jupyter nbconvert --to script {Path(path).name}` and run the .py",
                            str(path))
    try:
        with tokenize.open(path) as file:
            return file.read()
    except OSError as error:
        raise TemplateError(f"cannot read the recipe: {error.strerror}", str(path)) from None
    except (SyntaxError, UnicodeDecodeError) as error:  # a coding line that lies, or none
        raise TemplateError(f"cannot decode the recipe ({error}): save it as UTF-8, or name its "
                            "encoding in a first-line comment such as # -*- coding: latin-1 -*-",
                            str(path)) from None


@dataclass(frozen=True)
class Marker:
    """One marker: its hyperparameter name, the call inside it and where it stands."""

    name: str
    expression: str
    line: int
    column: int
    explicit: bool = False
    builders: tuple[tuple[str, str], ...] = ()  # (text, code) of options built per trial


@dataclass(frozen=True)
class Template:
    """A compiled recipe: the original source, the rewritten code and its markers."""

    source: str
    code: str
    filename: str
    function: str
    markers: tuple[Marker, ...]
    data_function: str = "data"
    # The recipe constants a script's hyperas call gives (``max_evals=3`` is ``MAX_EVALS``),
    # as the text of its arguments, for the recipe to evaluate in the script's namespace.
    call_defaults: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_source(cls, source: str, filename: str = "<string>", function: str = "model",
                    helpers: Collection[str] = ()) -> Template:
        """Compile recipe source text; ``function`` is the only one markers may sit in.

        With ``function`` left as ``model``, a script may name its own (hyperas'
        ``create_model``): the model and data its ``optim.minimize(...)`` call passes, else
        ``model`` and ``data``, else the one function that holds markers, with ``data``.

        ``helpers`` are hyperas' ``functions=`` (the call's, too): as hyperas moves the
        model's imports above them, an import in the model does not rebind their names.
        """
        found = _scan(source, filename)
        names = _assign_names(found, filename)
        code = _rewrite(source, found, names)
        tree = _parse(code, filename, found)
        data_function = "data"
        call_defaults: tuple[tuple[str, str], ...] = ()
        if function == "model":
            function, data_function, call_defaults = _script_functions(tree, found)
        searched = _searched(tree, function, data_function, found)
        if len(searched) < len(found):  # name and rewrite only the markers of this search
            found = searched
            names = _assign_names(found, filename)
            code = _rewrite(source, found, names)
        _check_placement(tree, filename, function, data_function, found)
        code = _without_imports_of(code, function, {*helpers, *_helpers_named(tree)})
        markers = tuple(
            Marker(name, m.expression, m.line, m.column, m.explicit_name is not None, m.builders)
            for name, m in zip(names, found, strict=True)
        )
        if filename.startswith("<") or not os.path.isfile(filename):
            # Let tracebacks show the user's line for source that has no file (here: a
            # recipe shipped to a Spark executor on another host).
            lines = io.StringIO(source).readlines()  # as the tokenizer splits them
            linecache.cache[filename] = (len(source), None, lines, filename)
        return cls(source, code, filename, function, markers, data_function, call_defaults)

    @classmethod
    def from_file(cls, path: str | Path, function: str = "model") -> Template:
        return cls.from_source(read_source(path), str(path), function)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], helpers: Collection[str] = ()) -> Template:
        """Compile a function written with ``{{…}}`` markers (in a script or notebook cell)."""
        try:
            lines, first = inspect.getsourcelines(fn)
            filename = inspect.getsourcefile(fn) or fn.__code__.co_filename
        except (OSError, TypeError):
            raise TemplateError(
                f"cannot read the source of {getattr(fn, '__name__', fn)!r}: define it in a "
                "file or a notebook cell, or pass the recipe's path instead",
                getattr(getattr(fn, "__code__", None), "co_filename", "<unknown>"),
            ) from None
        # Pad with blank lines so the compiled code keeps the file's line numbers.
        source = "\n" * (first - 1) + textwrap.dedent("".join(lines))
        template = cls.from_source(source, filename, fn.__name__, helpers)
        _check_helpers(fn)
        return template

    def compile(self) -> Any:
        """The code object of the rewritten source, with the recipe's file name."""
        return compile(self.code, self.filename, "exec")

    def distributions(self, namespace: Mapping[str, Any] | None = None) -> dict[str, Distribution]:
        """Evaluate every marker; ``namespace`` supplies names its arguments use."""
        return {m.name: _evaluate(m, self.filename, namespace) for m in self.markers}

    def space(self, namespace: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The hyperopt search space: ``{name: hp.<dist>(name, …)}``."""
        return {name: d.to_hyperopt(name) for name, d in self.distributions(namespace).items()}


@dataclass(frozen=True)
class _Found:
    start: tuple[int, int]
    end: tuple[int, int]
    expression: str
    base_name: str | None
    explicit_name: str | None
    line: int
    column: int
    builders: tuple[tuple[str, str], ...] = ()
    style: str = "<<"  # or hyperas' "{{"


_OPERAND_END = {")", "]", "}"}
_SKIPPED = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def _tokens(source: str, filename: str) -> list[tokenize.TokenInfo]:
    tokens: list[tokenize.TokenInfo] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            tokens.append(tok)
    except tokenize.TokenError:
        line = _unclosed_line(tokens)
        raise TemplateError("a bracket or marker opened on this line is never closed",
                            filename, line) from None
    except (IndentationError, SyntaxError) as error:
        raise TemplateError(error.msg, filename, error.lineno) from None
    significant = []
    fstring_depth = 0
    for tok in tokens:
        # On Python ≥ 3.12 f-strings are split into tokens; their text is not code.
        if tok.type == _FSTRING_START:
            fstring_depth += 1
        elif tok.type == _FSTRING_END:
            fstring_depth -= 1
        elif fstring_depth == 0 and tok.type not in _SKIPPED:
            significant.append(tok)
    return significant


def _unclosed_line(tokens: list[tokenize.TokenInfo]) -> int | None:
    """The line of the innermost bracket left open when the tokenizer hit the end."""
    stack: list[int] = []
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in "([{":
            stack.append(tok.start[0])
        elif tok.type == tokenize.OP and tok.string in ")]}" and stack:
            stack.pop()
    return stack[-1] if stack else (tokens[-1].start[0] if tokens else None)


def _ends_operand(tok: tokenize.TokenInfo | None) -> bool:
    if tok is None:
        return False
    if tok.type == tokenize.NAME:
        return not keyword.iskeyword(tok.string) or tok.string in {"True", "False", "None"}
    return tok.type in (tokenize.NUMBER, tokenize.STRING) or tok.string in _OPERAND_END


def _opener(tokens: list[tokenize.TokenInfo], i: int) -> str | None:
    """'<<' or '{{' if a marker starts at token i, else None."""
    tok = tokens[i]
    previous = tokens[i - 1] if i else None
    if tok.string == "<<" and not _ends_operand(previous):
        return "<<"  # in operand position '<<' cannot be a shift: it opens a marker
    if tok.string == "{" and i + 1 < len(tokens):
        nxt = tokens[i + 1]
        if nxt.string == "{" and nxt.start == tok.end:
            return "{{"
    return None


def _scan(source: str, filename: str) -> list[_Found]:
    tokens = _tokens(source, filename)
    lines = io.StringIO(source).readlines()  # as the tokenizer splits them
    found: list[_Found] = []
    i = 0
    while i < len(tokens):
        style = _opener(tokens, i)
        if style is None:
            if tokens[i].string == ">>" and not _ends_operand(tokens[i - 1] if i else None):
                raise TemplateError("'>>' without a matching '<<' before it", filename, tokens[i].start[0])
            i += 1
            continue
        first = i + (1 if style == "<<" else 2)
        close = _closing(tokens, first, style, filename)
        start, end = tokens[i].start, tokens[close + (0 if style == "<<" else 1)].end
        inner = _text(lines, tokens[first].start, tokens[close].start) if close > first else ""
        expression, explicit, builders = _parse_marker(inner, style, filename, start[0])
        found.append(_Found(start, end, expression, _identifier_before(tokens, i), explicit,
                            start[0], start[1], builders, style))
        i = close + (1 if style == "<<" else 2)
    return found


def _closing(tokens: list[tokenize.TokenInfo], first: int, style: str, filename: str) -> int:
    """Index of the token that closes the marker opened just before ``first``."""
    closer = ">>" if style == "<<" else "}"
    line = tokens[first - 1].start[0]
    depth = 0
    for j in range(first, len(tokens)):
        tok = tokens[j]
        if depth == 0 and tok.string == closer:
            if style == "<<" or (j + 1 < len(tokens) and tokens[j + 1].string == "}"
                                 and tokens[j + 1].start == tok.end):
                return j
        if j > first and _opener(tokens, j):
            raise TemplateError("markers cannot be nested; give each hyperparameter its own "
                                "marker", filename, line)
        if tok.string in "([{" and tok.type == tokenize.OP:
            depth += 1
        elif tok.string in ")]}" and tok.type == tokenize.OP:
            depth -= 1
        if depth < 0 or tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            break
    want = ">>" if style == "<<" else "}}"
    raise TemplateError(f"marker '{style}' is not closed: expected '{want}' after the "
                        f"distribution call, e.g. {style}uniform(0, 1){want}", filename, line)


def _text(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    (l1, c1), (l2, c2) = start, end
    if l1 == l2:
        return lines[l1 - 1][c1:c2]
    return lines[l1 - 1][c1:] + "".join(lines[l1:l2 - 1]) + lines[l2 - 1][:c2]


def _identifier_before(tokens: list[tokenize.TokenInfo], i: int) -> str | None:
    """Hyperas' rule: the identifier right before '=' or '(' that precedes this marker."""
    if i >= 2 and tokens[i - 1].string in {"=", "("} and tokens[i - 2].type == tokenize.NAME:
        return tokens[i - 2].string
    return None


def _parse_marker(inner: str, style: str, filename: str, line: int
                  ) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
    """The marker's call text without ``name=``, the explicit name if given, and the
    options built per trial (see :func:`_built_options`)."""
    text = " ".join(inner.split())
    closer = ">>" if style == "<<" else "}}"
    example = f"{style}uniform(0, 1){closer}"
    if not text:
        raise TemplateError(f"empty marker: write a distribution call, e.g. {example}", filename, line)
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as error:
        raise TemplateError(f"marker {style}{text}{closer} is not valid Python: {error.msg}",
                            filename, line) from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise TemplateError(f"a marker holds one distribution call such as {example}; got "
                            f"{style}{text}{closer} (put arithmetic outside the marker)",
                            filename, line)
    kind = node.func.id
    if kind not in NAMES:
        close = difflib.get_close_matches(kind, NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TemplateError(f"unknown distribution {kind!r} in {style}{text}{closer}: {hint}"
                            f"known: {', '.join(NAMES)}", filename, line)
    explicit = None
    for kw in node.keywords:
        if kw.arg == "name":
            if not (isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)
                    and kw.value.value.isidentifier()):
                raise TemplateError(f"name= in {style}{text}{closer} must be an identifier "
                                    "in quotes, e.g. name=\"dropout_in\"", filename, line)
            explicit = kw.value.value
    node.keywords = [kw for kw in node.keywords if kw.arg != "name"]
    builders = _built_options(node, text, f"{style}{text}{closer}", filename, line)
    return ast.unparse(node), explicit, builders


def _built_options(call: ast.Call, text: str, marker: str, filename: str, line: int
                   ) -> tuple[tuple[str, str], ...]:
    """The options of a ``choice``/``pchoice`` written as a list that construct an object
    (a call or a lambda), as ``(text as written, code)``; each is replaced in ``call`` by
    its text, so the space, the params and the tags hold ``Dropout(0.5)``, never an object."""
    name = getattr(call.func, "id", None)  # the parser let only a bare name through
    if name not in ("choice", "pchoice") or not call.args \
            or not isinstance(call.args[0], ast.List | ast.Tuple):
        return ()
    options = call.args[0].elts
    if name == "pchoice":  # (probability, option) pairs; others are reported later
        slots = [(item.elts, 1) for item in options if isinstance(item, ast.Tuple) and len(item.elts) == 2]
    else:
        slots = [(options, i) for i in range(len(options))]
    builders: list[tuple[str, str]] = []
    texts: list[str] = []
    for holder, index in slots:
        option = holder[index]
        if any(isinstance(node, ast.Call | ast.Lambda) for node in ast.walk(option)):
            label = ast.get_source_segment(text, option) or ast.unparse(option)
            builders.append((label, ast.unparse(option)))
            holder[index] = ast.Constant(label)
            texts.append(label)
        elif isinstance(option, ast.Constant) and isinstance(option.value, str):
            texts.append(option.value)
    clash = sorted({t for t in texts if texts.count(t) > 1})
    if clash:
        raise TemplateError(f"two options of {marker} read {clash[0]!r}; options must differ",
                            filename, line)
    return tuple(builders)


def _assign_names(found: list[_Found], filename: str) -> list[str]:
    explicit = [f.explicit_name for f in found if f.explicit_name]
    for name in explicit:
        if explicit.count(name) > 1:
            line = next(f.line for f in found if f.explicit_name == name)
            raise TemplateError(f"two markers are named {name!r}; names must be unique", filename, line)
    taken = set(explicit)
    seen: dict[str, int] = {}
    names: list[str] = []
    previous: str | None = None
    for f in found:
        if f.explicit_name:
            names.append(f.explicit_name)
            previous = f.explicit_name
            continue
        # No identifier before the marker: reuse the previous marker's name, as hyperas does.
        base = f.base_name or previous or f.expression.split("(", 1)[0]
        previous = base
        count = seen.get(base, -1) + 1
        name = base if count == 0 else f"{base}_{count}"
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        seen[base] = count
        taken.add(name)
        names.append(name)
    return names


def _rewrite(source: str, found: list[_Found], names: list[str]) -> str:
    lines = io.StringIO(source).readlines()  # as the tokenizer splits them
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1]

    out, cursor = [], 0
    for f, name in zip(found, names, strict=True):
        out.append(source[cursor:offset(f.start)])
        # Newlines go inside the call's parentheses, so a multi-line marker keeps the
        # line numbers of everything after it.
        builders = "".join(f", {label!r}: lambda: {code}" for label, code in f.builders)
        builders = f", {{{builders[2:]}}}" if builders else ""
        out.append(f'{PARAM_FUNCTION}("{name}"{builders}{chr(10) * (f.end[0] - f.start[0])})')
        cursor = offset(f.end)
    out.append(source[cursor:])
    return "".join(out)


def _parse(code: str, filename: str, found: list[_Found]) -> ast.Module:
    try:
        return ast.parse(code, filename)
    except SyntaxError as error:
        near = any(abs(f.line - (error.lineno or 0)) <= 1 for f in found)
        hint = " (markers are written <<uniform(0, 1)>> or {{uniform(0, 1)}})" if near else ""
        if error.msg.startswith("f-string") and any(m in (error.text or "") for m in ("<<", "{{")):
            hint = (" (a marker inside an f-string is not read: give it a name first, units = "
                    "<<choice([8, 16])>>, and write {units} in the f-string)")
        raise TemplateError(f"{error.msg}{hint}", filename, error.lineno) from None


# hyperas' optim functions and their leading parameters (tuning.optim's signatures are
# hyperas'), which a script may pass by position.
_SEARCHES = {
    "minimize": ("model", "data", "algo", "max_evals", "trials", "functions", "rseed"),
    "best_models": ("nb_models", "model", "data", "algo", "max_evals", "trials", "functions"),
    "best_ensemble": ("nb_ensemble_models", "model", "data", "algo", "max_evals", "trials"),
}
# A call's arguments that are a recipe's constants; hyperas seeds with 1337 when not told.
_CALL_DEFAULTS = {"max_evals": "MAX_EVALS", "algo": "ALGO", "rseed": "SEED", "seed": "SEED"}
_HYPERAS_SEED = "1337"
_Function = ast.FunctionDef | ast.AsyncFunctionDef


def _search_calls(tree: ast.Module) -> Iterator[dict[str, ast.expr]]:
    """The arguments of each hyperas ``minimize(model, data, …)`` call in the file, by name."""
    for node in ast.walk(tree):
        called = getattr(node, "func", None)
        parameters = _SEARCHES.get(str(getattr(called, "attr", getattr(called, "id", ""))), ())
        if isinstance(node, ast.Call) and parameters:
            named = dict(zip(parameters, node.args, strict=False))  # by keyword or by position
            yield {**named, **{k.arg: k.value for k in node.keywords if k.arg}}


def _helpers_named(tree: ast.Module) -> set[str]:
    """The names in the ``functions=[…]`` of the file's searches."""
    lists = [call["functions"] for call in _search_calls(tree) if "functions" in call]
    return {item.id for value in lists if isinstance(value, ast.List | ast.Tuple)
            for item in value.elts if isinstance(item, ast.Name)}


def _without_imports_of(code: str, function: str, names: set[str]) -> str:
    """``code`` without the imports in ``function`` that bind one of ``names`` (each left as
    ``pass``, on as many lines)."""
    model = _functions(ast.parse(code)).get(function) if names else None
    if model is None:
        return code
    lines = io.StringIO(code).readlines()  # as the parser counts lines (not at \x0c or \u2028)
    dropped = [node for node in ast.walk(model) if isinstance(node, ast.Import | ast.ImportFrom)
               and any((a.asname or a.name.split(".")[0]) in names for a in node.names)]
    for node in sorted(dropped, key=lambda n: (n.lineno, n.col_offset), reverse=True):  # last first
        kept = [a for a in node.names if (a.asname or a.name.split(".")[0]) not in names]
        replacement = ast.unparse(type(node)(**{**vars(node), "names": kept})) if kept else "pass"
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        head = lines[first].encode()[:node.col_offset].decode()  # offsets count UTF-8 bytes
        tail = lines[last].encode()[node.end_col_offset:].decode()
        lines[first:last + 1] = [head + replacement + "\n" * (last - first) + tail]
    return "".join(lines)


def _script_functions(tree: ast.Module, found: list[_Found]
                      ) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """The model and data functions of a recipe file (see Template.from_source), and the
    constants its hyperas call gives."""
    defined = _functions(tree)
    for call in _search_calls(tree):
        names = {k: v.id for k, v in call.items() if k in ("model", "data") and isinstance(v, ast.Name)}
        if names.get("model") in defined:
            given = {constant: ast.unparse(call[argument]) for argument, constant in _CALL_DEFAULTS.items()
                     if argument in call and _plain_value(call[argument])}
            if "trials" in call:  # hyperas' call (tuning.minimize takes no Trials): its seed
                given.setdefault("SEED", _HYPERAS_SEED)
            return names["model"], names.get("data", "data"), tuple(given.items())
    if "model" in defined:
        return "model", "data", ()
    holders = {holder for f in found if (holder := _holder(defined, f))} - {"data"}
    return (holders.pop(), "data", ()) if len(holders) == 1 else ("model", "data", ())


def _plain_value(node: ast.expr) -> bool:
    """A literal, a name or a dotted name (``3``, ``EVALS``, ``tpe.suggest``): what a
    recipe may take from a call without running code of the script's (``args.evals`` of a
    parser that reads the command line, ``len(data()[0])``)."""
    return all(isinstance(n, ast.Constant | ast.Name | ast.Attribute | ast.Load | ast.UnaryOp | ast.USub)
               for n in ast.walk(node))


def _functions(tree: ast.Module) -> dict[str, _Function]:
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _holder(functions: Mapping[str, _Function], f: _Found) -> str | None:
    """The module-level function whose body holds the marker, if any."""
    return next((name for name, node in functions.items()
                 if node.lineno <= f.line <= (node.end_lineno or node.lineno)), None)


def _reads(node: ast.AST) -> set[str]:
    """The names ``node`` reads that are not its own locals (a function's parameters and
    what it assigns): ``model = Sequential()`` in a function reads no ``model()``."""
    own: set[str] = set()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        own = {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                               node.args.vararg, node.args.kwarg) if a is not None}
    own |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - own


def _used_by(functions: Mapping[str, _Function], function: str) -> set[str]:
    """The module's functions that ``function`` reaches by name, itself included."""
    reached, todo = set(), [function]
    while todo:
        name = todo.pop()
        if name in functions and name not in reached:
            reached.add(name)
            todo.extend(_reads(functions[name]))
    return reached


def _searched(tree: ast.Module, function: str, data_function: str, found: list[_Found]) -> list[_Found]:
    """The markers this search reads: all but hyperas' ``{{…}}`` in the script's other
    functions that nothing in the file calls or names but a search (its other models).
    hyperas reads only the model's markers, and ``{{…}}`` is valid Python, so a script may
    hold several models; a marker in a function something uses stays, to be refused."""
    functions = _functions(tree)
    if function not in functions:
        return found  # the error will say so
    searched = {id(v) for call in _search_calls(tree) for k, v in call.items() if k in ("model", "data")}
    module = [node for node in tree.body if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    named = {n.id for node in module for n in ast.walk(node)
             if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in searched}
    for name, node in functions.items():
        named |= _reads(node) - {name}
    kept = {function, data_function} | named

    def elsewhere(f: _Found) -> bool:
        holder = _holder(functions, f)
        return f.style == "{{" and holder is not None and holder not in kept

    return [f for f in found if not elsewhere(f)]


def _check_placement(tree: ast.Module, filename: str, function: str, data_function: str,
                     found: list[_Found]) -> None:
    if not found:
        return
    functions = _functions(tree)
    for f in found:
        holder = _holder(functions, f)
        if holder == function:
            continue
        if function not in functions:
            why = f"defines no {function}() (a script may name its own: optim.minimize(model=…, data=…))"
        elif holder == data_function:
            why = (f"places it in {holder}(), which runs once for the whole search: move the marker, "
                   f"and the work that uses its value, into {function}()")
        elif holder is not None and holder in _used_by(functions, function):
            why = _in_helper(holder, function)
        elif holder is not None:
            why = f"places it in {holder}(), not in {function}()"
        else:
            why = f"places it outside {function}()"
        raise _outside(f.expression, why, function, filename, f.line)


def _in_helper(helper: str, function: str) -> str:
    return f"places it in {helper}(), which {function}() uses: pass the value to {helper}() instead"


def _outside(expression: str, why: str, function: str, filename: str, line: int) -> TemplateError:
    return TemplateError(f"marker for {expression} is outside the model function: the recipe "
                         f"{why}; markers may only appear in the body of {function}()", filename, line)


def _check_helpers(fn: Callable[..., Any]) -> None:
    """Refuse a ``{{…}}`` marker in a function of ``fn``'s module that ``fn`` calls: only the
    model's markers are read (as in hyperas), and that one would fail in every trial."""
    seen: set[Any] = set()
    todo = [fn]
    while todo:
        caller = todo.pop()
        for name in global_names(caller.__code__):
            helper = caller.__globals__.get(name)
            if (not inspect.isfunction(helper) or helper in seen or helper is fn
                    or helper.__module__ != fn.__module__):
                continue
            seen.add(helper)
            todo.append(helper)
            where = helper.__code__.co_filename  # a notebook's other cell, or the same file
            try:
                lines, first = inspect.getsourcelines(helper)
                text = textwrap.dedent("".join(lines))
                found = _scan(text, where) if "{{" in text else []
            except (OSError, TypeError, TemplateError):
                continue  # no source to read, or none the scanner takes: nothing to tell
            for f in found:
                if f.style == "{{":
                    raise _outside(f.expression, _in_helper(helper.__name__, fn.__name__), fn.__name__,
                                   where, f.line + first - 1)


_GLOBAL_READS = ("LOAD_GLOBAL", "LOAD_NAME")


def global_names(code: types.CodeType) -> set[str]:
    """The global names a code object and the functions nested in it read (not attributes:
    ``self.model`` reads no ``model``)."""
    codes, names = [code], set[str]()
    while codes:
        current = codes.pop()
        names.update(i.argval for i in dis.get_instructions(current) if i.opname in _GLOBAL_READS)
        codes.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return names


def _evaluate(marker: Marker, filename: str, namespace: Mapping[str, Any] | None) -> Distribution:
    kind = marker.expression.split("(", 1)[0]
    scope = {"__builtins__": builtins, **(namespace or {}),
             kind: functools.partial(Distribution.create, kind)}
    try:
        return eval(marker.expression, scope)  # noqa: S307 - recipe code, run by its author
    except DistributionError as error:
        raise TemplateError(f"{marker.name}: {error}", filename, marker.line) from None
    except NameError as error:
        raise TemplateError(f"{marker.name}: {error} in the marker's arguments (names must be "
                            "defined or imported at module level)", filename, marker.line) from None
    except Exception as error:  # the arguments are user code; report, don't crash
        raise TemplateError(f"{marker.name}: evaluating {marker.expression} raised "
                            f"{type(error).__name__}: {error}", filename, marker.line) from None
