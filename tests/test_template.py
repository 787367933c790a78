"""The template compiler: markers, names, line numbers, errors."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import traceback
from pathlib import Path

import pytest
from hyperas.distributions import choice  # noqa: F401 - the name {{…}} markers use
from hypothesis import given, settings
from hypothesis import strategies as st

from tuning.errors import TemplateError
from tuning.template import PARAM_FUNCTION, Template, assigned, param_value


def hyperas_names(model_source: str) -> list[str]:
    """hyperas' own ``hyperparameter_names``, read from the installed package.

    ``hyperas.optim`` cannot be imported under Keras 3, so the function's source is
    taken out of the file and run by itself.
    """
    spec = importlib.util.find_spec("hyperas")
    path = Path(next(iter(spec.submodule_search_locations))) / "optim.py"
    tree = ast.parse(path.read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                    and n.name == "hyperparameter_names")
    namespace: dict = {"re": re}
    exec(compile(ast.Module([function], []), str(path), "exec"), namespace)
    return namespace["hyperparameter_names"](model_source)


HYPERAS_README_MODEL = '''\
def model(x_train, y_train, x_test, y_test):
    model = Sequential()
    model.add(Dense(512, input_shape=(784,)))
    model.add(Activation('relu'))
    model.add(Dropout({{uniform(0, 1)}}))
    model.add(Dense({{choice([256, 512, 1024])}}))
    model.add(Activation({{choice(['relu', 'sigmoid'])}}))
    model.add(Dropout({{uniform(0, 0.5)}}))
    if {{choice(['three', 'four'])}} == 'four':
        model.add(Dense(100))
        model.add({{choice([Dropout(0.5), Activation('linear')])}})
        model.add(Activation('relu'))
    model.compile(loss='categorical_crossentropy', metrics=['accuracy'],
                  optimizer={{choice(['rmsprop', 'adam', 'sgd'])}})
    model.fit(x_train, y_train, batch_size={{choice([64, 128])}}, epochs=1)
    return model
'''

# The hyperas + MLflow MNIST tutorial's model: repeated marker expressions, which hyperas
# mislabels (it names each by the first textual match of the same expression).
TUTORIAL_MODEL = '''\
def model(x_train, y_train, x_test, y_test):
    f1 = {{quniform(24, 64, 4)}}
    f2 = {{quniform(8, 128, 4)}}
    d1 = {{uniform(0, 1)}}
    d2 = {{uniform(0, 1)}}
    dense = {{quniform(8, 128, 4)}}
    d3 = {{uniform(0, 1)}}
    k1 = {{quniform(3, 5, 1)}}
    k2 = {{quniform(3, 5, 1)}}
    m = Sequential([Conv2D(f1, k1), Conv2D(f2, k2), Dropout(d1), Dense(dense), Dropout(d2)])
    m.fit(x_train, y_train, batch_size={{quniform(32, 128, 4)}})
    return m
'''


def names(source: str) -> list[str]:
    return [m.name for m in Template.from_source(source).markers]


def test_names_equal_hyperas_where_hyperas_is_right():
    assert names(HYPERAS_README_MODEL) == hyperas_names(HYPERAS_README_MODEL)
    assert names(HYPERAS_README_MODEL) == [
        "Dropout", "Dense", "Activation", "Dropout_1", "Dropout_2", "add",
        "optimizer", "batch_size"]


def test_repeated_expressions_take_the_identifier_before_this_marker():
    ours = names(TUTORIAL_MODEL)
    assert ours == ["f1", "f2", "d1", "d2", "dense", "d3", "k1", "k2", "batch_size"]
    theirs = hyperas_names(TUTORIAL_MODEL)
    assert theirs[3] == "d1_1" and theirs[4] == "f2_1"  # the hyperas bug we do not copy


def test_native_markers_and_explicit_names():
    source = '''\
def model(x):
    a = <<uniform(0, 0.5, name="dropout_in")>>
    b = Dense(<<choice([1, 2])>>)(a)
    c = Dense(<<choice([3, 4])>>)(b)
    return <<choice(["x"])>>
'''
    template = Template.from_source(source)
    assert [m.name for m in template.markers] == ["dropout_in", "Dense", "Dense_1", "Dense_2"]
    assert template.markers[0].explicit
    assert template.markers[0].expression == "uniform(0, 0.5)"


def test_markers_in_strings_and_comments_are_untouched():
    source = '''\
def model(x):
    s = "<<uniform(0, 1)>> {{choice([1])}}"  # <<uniform(0, 1)>>
    t = f"{{{{not}}}} <<x>>"
    doc = """{{uniform(0, 1)}}"""
    return Dense(<<choice([1, 2])>>), 1 << 2, x >> 1
'''
    template = Template.from_source(source)
    assert [m.name for m in template.markers] == ["Dense"]
    rewritten = template.code.splitlines()
    assert rewritten[:4] == source.splitlines()[:4]
    assert rewritten[4] == f'    return Dense({PARAM_FUNCTION}("Dense")), 1 << 2, x >> 1'


def test_multiline_marker_keeps_every_line_number():
    source = '''\
def model(x):
    a = Dense(<<choice([
        16,
        32])>>)
    b = <<uniform(0, 1)>>
    raise ValueError("line 6")
'''
    template = Template.from_source(source)
    assert len(template.code.splitlines()) == len(source.splitlines())
    assert [m.line for m in template.markers] == [2, 5]
    namespace = {PARAM_FUNCTION: param_value, "Dense": lambda units: units}
    exec(template.compile(), namespace)
    with assigned({"Dense": 16, "b": 0.5}), pytest.raises(ValueError) as info:
        namespace["model"](None)
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno) == ("<string>", 6)
    assert frame.line == 'raise ValueError("line 6")'  # the user's own line, from linecache


def test_function_object_with_hyperas_markers_keeps_file_lines():
    def model(x):
        units = {{choice([4, 8])}}  # noqa: F841 (a set literal until compiled)
        return units * x

    template = Template.from_function(model)
    assert [m.name for m in template.markers] == ["units"]
    assert template.markers[0].line == model.__code__.co_firstlineno + 1
    assert template.filename == __file__


def conv_block():
    return {{choice([8, 16])}}  # noqa: F821 (a set literal, never run)


def calls_conv_block(x):
    return conv_block() * x


def test_a_marker_in_a_function_the_model_calls_is_refused_with_where_to_move_it():
    """hyperas reads only the model's markers; this one would fail in every trial."""
    with pytest.raises(TemplateError, match=r"places it in conv_block\(\), which calls_conv_block\(\) "
                                            r"uses: pass the value to conv_block\(\) instead") as info:
        Template.from_function(calls_conv_block)
    assert (info.value.filename, info.value.line) == (__file__, conv_block.__code__.co_firstlineno + 1)


HELPER_AND_IMPORT = """
def f1_score(y_true, y_pred):
    return "the script's helper"


def model():
    from sklearn.metrics import (accuracy_score,
                                 f1_score)
    import os.path as paths
    return f1_score(1, 0), accuracy_score.__name__, paths.sep, {{choice([1, 2])}}


if __name__ == "__main__":
    optim.minimize(model=model, data=data, functions=[f1_score], algo=tpe.suggest, max_evals=5,
                   trials=Trials())
"""


def test_an_import_in_the_model_does_not_rebind_a_helper_its_functions_name():
    """hyperas moves the model's imports above the ``functions=`` helpers: the helper wins."""
    template = Template.from_source(HELPER_AND_IMPORT, "script.py")
    assert template.code.count("\n") == HELPER_AND_IMPORT.count("\n")  # lines stay where they were
    namespace = {PARAM_FUNCTION: param_value, "__name__": "script"}
    exec(template.compile(), namespace)
    with assigned({"choice": 2}):
        assert namespace["model"]() == ("the script's helper", "accuracy_score", "/", 2)


def imports_its_own_join():
    from os.path import join
    return join("a", "b"), {{choice([1, 2])}}  # noqa: F821 (a set literal until compiled)


def test_a_helper_passed_to_optim_is_not_rebound_by_the_models_import():
    template = Template.from_function(imports_its_own_join, ["join"])
    namespace = {PARAM_FUNCTION: param_value, "join": lambda *parts: "the helper"}
    exec(template.compile(), namespace)
    with assigned({"choice": 1}):
        assert namespace["imports_its_own_join"]() == ("the helper", 1)
    assert Template.from_function(imports_its_own_join).code.count("from os.path import join") == 1


def test_the_hyperas_calls_read_by_position_are_tuning_optims_own():
    import tuning.optim
    from tuning.template import _SEARCHES

    for name, leading in _SEARCHES.items():
        parameters = list(inspect.signature(getattr(tuning.optim, name)).parameters)
        assert parameters[:len(leading)] == list(leading)


@pytest.mark.parametrize(("call", "defaults"), [
    ("minimize(model=model, data=data, algo=rand.suggest, max_evals=3, trials=Trials(), rseed=7)",
     (("MAX_EVALS", "3"), ("ALGO", "rand.suggest"), ("SEED", "7"))),
    ("optim.minimize(model, data, tpe.suggest, EVALS, Trials())",
     (("MAX_EVALS", "EVALS"), ("ALGO", "tpe.suggest"), ("SEED", "1337"))),  # hyperas' seed
    ("optim.best_ensemble(5, model, data, rand.suggest, 4, Trials(), voting='hard')",
     (("MAX_EVALS", "4"), ("ALGO", "rand.suggest"), ("SEED", "1337"))),
    # code to run (a parser of the command line, data()) is not run to learn a default
    ("optim.minimize(model, data, tpe.suggest, options().evals, Trials())",
     (("ALGO", "tpe.suggest"), ("SEED", "1337"))),
    ("tuning.minimize(model, data, max_evals=20, algo='rand', seed=7)",  # tuning's own: no 1337
     (("MAX_EVALS", "20"), ("ALGO", "'rand'"), ("SEED", "7"))),
])
def test_a_scripts_hyperas_call_gives_the_recipes_defaults(call, defaults):
    source = f"def data():\n    return ()\n\n\ndef model():\n    return {{{{uniform(0, 1)}}}}\n\n\n{call}\n"
    assert Template.from_source(source, "script.py").call_defaults == defaults


SEVERAL_MODELS = """
def data():
    return [1], [2]


def cnn(x_train, x_test):
    dense = {{choice([1, 2])}}
    return dense


def lstm(x_train, x_test):
    dense = {{uniform(0, 1)}}
    return dense


best_run, best_model = optim.minimize(model=lstm, data=data, algo=tpe.suggest, max_evals=5,
                                      trials=Trials())
"""


def test_a_local_variable_named_like_another_model_is_no_call_of_it():
    source = ("def model(x):\n    return {{uniform(0, 1)}}\n\n\ndef create_model(x):\n"
              "    model = {{choice([1, 2])}}\n    return model\n\n\n"
              "optim.minimize(model=create_model, data=data, algo=tpe.suggest, max_evals=2,"
              " trials=Trials())\n")
    template = Template.from_source(source, "script.py")
    assert [(m.name, m.expression) for m in template.markers] == [("model", "choice([1, 2])")]


def old_model():
    return {{uniform(0, 1)}}  # noqa: F821 (a set literal, never run)


def stops_early():
    class Stop:
        def on_epoch_end(self):
            self.old_model.stop_training = True  # an attribute, not the function old_model()

    return Stop, {{choice([1, 2])}}  # noqa: F821


def test_an_attribute_named_like_a_function_is_no_call_of_it():
    assert [m.name for m in Template.from_function(stops_early).markers] == ["choice"]


def test_imports_on_one_line_drop_one_by_one():
    source = ("def model():\n    from os import sep; from os.path import join; import json\n"
              "    return sep(), join(), json.dumps(1), {{choice([1])}}\n")
    template = Template.from_source(source, "script.py", helpers=["sep", "join"])
    assert template.code.splitlines()[1] == "    pass; pass; import json"


@pytest.mark.parametrize("function", ["model", "lstm"])  # `tuning run`; a worker told the name
def test_a_script_with_several_models_reads_only_the_markers_of_the_one_searched(function):
    """As hyperas does: the other models' ``{{…}}`` stay Python that nothing calls."""
    template = Template.from_source(SEVERAL_MODELS, "script.py", function)
    assert template.function == "lstm"
    assert [(m.name, m.expression, m.line) for m in template.markers] == [("dense", "uniform(0, 1)", 12)]
    assert "dense = {{choice([1, 2])}}" in template.code
    template.compile()


@pytest.mark.parametrize(("source", "message", "line"), [
    ("def model(x):\n    return <<unifrom(0, 1)>>\n",
     "unknown distribution 'unifrom'.*did you mean 'uniform'", 2),
    ("def model(x):\n    a = 1\n    return Dense(<<uniform(0, 1))\n", "marker '<<' is not closed", 3),
    ("def model(x):\n    return {{uniform(0, 1)}\n", "never closed", 2),
    ("def model(x):\n    return <<uniform(1, 0)>>\n", "low must be below high", 2),
    ("def model(x):\n    return <<uniform(1)>>\n", r"missing .*'high'; write uniform\(low, high\)", 2),
    ("def model(x):\n    return <<choice([])>>\n", "options must not be empty", 2),
    ("def model(x):\n    return <<quniform(0, 8, 0)>>\n", "q must be positive", 2),
    ("def model(x):\n    return <<uniform(0, 1) + 1>>\n", "one distribution call", 2),
    ("def model(x):\n    return <<>>\n", "empty marker", 2),
    ("def model(x):\n    return <<choice([<<uniform(0, 1)>>])>>\n", "cannot be nested", 2),
    ("x = <<uniform(0, 1)>>\n\ndef model(x):\n    return x\n", "outside the model function", 1),
    ("def data():\n    return <<uniform(0, 1)>>\n", "defines no model", 2),
    ("def data():\n    return {{uniform(0, 1)}}\n\ndef model(x):\n    return x\n",
     r"in data\(\), which runs once for the whole search: move the marker.* into model\(\)", 2),
    ("def other():\n    return <<uniform(0, 1)>>\n\ndef model(x):\n    return x\n",
     r"places it in other\(\), not in model\(\)", 2),
    ("def block():\n    return {{choice([8, 16])}}\n\ndef model(x):\n    return block()\n",
     r"in block\(\), which model\(\) uses: pass the value to block\(\) instead", 2),
    ("def wide():\n    return {{choice([64, 128])}}\n\nBLOCKS = {'wide': wide}\n\ndef model(x):\n"
     "    return BLOCKS['wide']()\n", r"places it in wide\(\), not in model\(\)", 2),
    ("def load():\n    return {{choice([1, 2])}}\n\ndef data():\n    return load()\n\ndef model(x):\n"
     "    return x\n", r"places it in load\(\), not in model\(\)", 2),
    ("def cnn():\n    return {{uniform(0, 1)}}\n\ndef lstm():\n    return {{uniform(0, 1)}}\n",
     "defines no model", 2),
    ("def model(x):\n    a = <<uniform(0, 1, name='a')>>\n    b = <<uniform(0, 1, name='a')>>\n",
     "two markers are named 'a'", 2),
    ("def model(x):\n    return <<choice(OPTIONS)>>\n", "OPTIONS", 2),
    ("def model(x):\n    return x >>\n", "'>>' without a matching '<<'|invalid syntax", 2),
])
def test_errors_name_the_file_line_and_fix(source, message, line):
    with pytest.raises(TemplateError, match=message) as info:
        Template.from_source(source, "recipe.py").distributions()
    assert info.value.filename == "recipe.py"
    assert info.value.line == line
    assert str(info.value).startswith(f"recipe.py:{line}: ")


def test_marker_arguments_may_use_recipe_names():
    template = Template.from_source("def model(x):\n    return <<choice(OPTIONS)>>\n")
    assert template.distributions({"OPTIONS": [1, 2]})["choice"].grid == [1, 2]


def test_reading_a_value_outside_a_trial_says_how():
    template = Template.from_source("def model():\n    return <<choice([1, 2])>>\n")
    namespace = {PARAM_FUNCTION: param_value}
    exec(template.compile(), namespace)
    with pytest.raises(RuntimeError, match="outside a trial"):
        namespace["model"]()
    with assigned({"choice": 2}):
        assert namespace["model"]() == 2


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_text_in_strings_and_comments_never_changes(text):
    literal = repr(text)
    comment = "".join(c for c in text if c.splitlines() == [c] and c != "\x00")  # a comment line
    source = f"def model(x):\n    s = {literal}  # {comment}\n    return Dense(<<choice([1, 2])>>)\n"
    template = Template.from_source(source)
    assert template.code.split("\n")[1] == source.split("\n")[1]
    assert [m.name for m in template.markers] == ["Dense"]


@settings(max_examples=300, deadline=None)
@given(source=st.text(alphabet="<>{}()[]=,.:'\"#\n dfelmoiunrcha0123_", max_size=80))
def test_any_text_compiles_or_raises_template_error(source):
    try:
        template = Template.from_source(source, "fuzz.py")
    except TemplateError as error:
        assert error.filename == "fuzz.py"
        return
    assert len(template.code.splitlines()) == len(source.splitlines())


# Statement shapes hyperas scripts use; {n} makes every marker expression distinct, the case
# in which hyperas' own naming is right and ours must equal it.
_SHAPES = [
    "    {name} = {{{{uniform(0, {n})}}}}",
    "    model.add(Dense({{{{choice([{n}, 100001])}}}}))",
    "    model.add(Dropout({{{{uniform(0, 0.{n})}}}}))",
    "    model.add({{{{choice([Dropout(0.{n}), Activation('relu')])}}}})",
    "    if {{{{choice(['three{n}', 'four'])}}}} == 'four':\n        pass",
    "    model.fit(x, y, batch_size={{{{choice([{n}, 200002])}}}}, epochs={{{{choice([300003, {n}])}}}})",
    "    model.compile(optimizer={{{{choice(['adam', 'sgd{n}'])}}}})",
]


@settings(max_examples=150, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(0, len(_SHAPES) - 1), st.sampled_from(["a", "b", "f1"])),
                       min_size=1, max_size=12))
def test_names_equal_hyperas_names_for_any_hyperas_style_model(shapes):
    body = [_SHAPES[shape].format(name=name, n=i + 1) for i, (shape, name) in enumerate(shapes)]
    source = "def model(x, y):\n" + "\n".join(body) + "\n    return model\n"
    if shapes[0][0] == 4:  # a first marker with no identifier: hyperas raises IndexError
        assert names(source)[0] == "choice"  # we name it after its distribution
        return
    assert names(source) == hyperas_names(source)


@pytest.mark.parametrize(("source", "hinted"), [
    ("def model(x):\n    a = 1\n    b = 1 + <<uniform(0, 1)>> 2\n", True),  # the error is at a marker
    ("def model(x):\n    y = <<uniform(0, 1)>>\n\n\n\n    return x +* 2\n", False),  # far from any
])
def test_the_marker_hint_of_a_syntax_error_is_given_only_near_a_marker(source, hinted):
    with pytest.raises(TemplateError) as info:
        Template.from_source(source, "recipe.py")
    assert ("markers are written" in str(info.value)) is hinted


def test_a_choice_of_objects_is_built_at_the_marker_for_every_trial():
    source = "def model(x):\n    return <<choice([Dropout(x), 'none'])>>\n"  # x: a local of the model
    template = Template.from_source(source)
    assert template.distributions()["choice"].grid == ["Dropout(x)", "none"]  # the space holds the text
    built = []
    namespace = {PARAM_FUNCTION: param_value, "Dropout": lambda rate: built.append(rate) or len(built)}
    exec(template.compile(), namespace)
    with assigned({"choice": "Dropout(x)"}):
        assert [namespace["model"](0.5), namespace["model"](0.25)] == [1, 2]  # a new object each time
    with assigned({"choice": "none"}):
        assert namespace["model"](0.1) == "none"
    assert built == [0.5, 0.25]
