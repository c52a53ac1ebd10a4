"""Recipes fuzzed with hypothesis: any input is a valid recipe or a one-line HeadstartError, never a traceback."""

import contextlib
import io

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.recipe import Recipe, set_stage_field

# Real field names, near-misses and junk, so the fuzzer reaches deep into the sections.
FIELD_NAMES = sorted(
    {
        name
        for model in ("DataConfig", "ModelConfig", "Stage", "RunConfig", "HeadConfig")
        for name in getattr(__import__("headstart.recipe", fromlist=[model]), model).model_fields
    }
    | set(Recipe.model_fields)
    | {"kind", "sigma", "factor", "size", "kernel_size", "epoch", "Freeze", "", "lr "}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["backbone", "top:3", "none", "blocks.5", "cosine", "sgd", "package", "file:/nope", "-1", "1e-3"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=5)
    ),
    max_leaves=25,
)
recipes = st.dictionaries(st.sampled_from(sorted(Recipe.model_fields) + ["extra"]), documents, max_size=4)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_error_or_recipe(build) -> None:
    try:
        recipe = build()
    except HeadstartError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert isinstance(recipe, Recipe)
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe  # what is saved loads back the same


@FUZZ
@given(recipes)
def test_any_mapping_is_a_recipe_or_one_line_error(values):
    one_line_error_or_recipe(lambda: Recipe.from_dict(values))


@FUZZ
@given(st.text(max_size=200))
def test_any_yaml_text_is_a_recipe_or_one_line_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_text(text)
    one_line_error_or_recipe(lambda: Recipe.from_yaml(path))


@FUZZ
@given(st.sampled_from(["epochs", "freeze", "bn", "lr", "optimizer", "schedule", "body_lr_mult"]), st.text(max_size=30))
def test_any_stage_flag_is_a_recipe_or_one_line_error(field, spec):
    one_line_error_or_recipe(lambda: set_stage_field(Recipe(), field, spec))


@settings(max_examples=40, deadline=None)
@given(recipes)
def test_command_line_never_shows_a_traceback(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("cli") / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["train", "--recipe", str(path), "--dry-run"])
    assert code in (0, 2) and "Traceback" not in err.getvalue()
    assert code == 0 or err.getvalue().startswith("headstart: error: ") and err.getvalue().count("\n") == 1
