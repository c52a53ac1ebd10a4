"""A search space for `headstart tune`: dotted recipe fields, each with a range or a list of choices.

    # space.yaml: every key is a recipe field as `headstart train --dry-run` nests it
    stages.head.lr: {low: 1.0e-4, high: 1.0e-1, log: true}    # a float range, sampled on a log scale
    stages.finetune.weight_decay: {low: 0.0, high: 0.1}        # a float range
    stages.finetune.freeze: [top:1, top:2, top:3]              # a list: choices
    model.head.hidden: {low: 64, high: 512, step: 64}          # whole numbers, an integer field: an integer range
    model.backbone: {choices: [tf_efficientnet_lite0, tf_efficientnet_lite2]}

Stages are named by their `name` (`stages.finetune.lr`), sections by their path (`model.head.dropout`,
`data.image_size`). A key that names no recipe field, and a bound or choice the recipe refuses, is a
one-line error before any trial runs. Sampling the values is the tuner's (headstart.experiments.tune).

Example:
    >>> space = read_space("space.yaml")
    >>> check_space(space, recipe, "space.yaml")
    >>> with_values(recipe, {"stages.head.lr": 0.01}).stages[0].lr
    0.01
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.config.describe import flatten
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError, close_matches
from headstart.core.yamlfile import read_yaml

Scalar = str | int | float | bool | None
RANGE_KEYS = {"low", "high", "log", "step"}
# Keys under these are free (timm.create_model's keyword arguments): the recipe cannot list them.
OPEN_SECTIONS = ("model.backbone_args.",)


@dataclass(frozen=True)
class Param:
    """One searched recipe field: a range (low..high, on a log scale or in steps) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Scalar, ...] | None = None

    @property
    def kind(self) -> str:
        """'choice', 'int' (whole numbers at both ends and step) or 'float'."""
        if self.choices is not None:
            return "choice"
        ends = (self.low, self.high) + ((self.step,) if self.step is not None else ())
        return "int" if all(isinstance(v, int) and not isinstance(v, bool) for v in ends) else "float"

    def examples(self) -> list[Scalar]:
        """The values checked against the recipe before a trial runs: every choice, or both ends."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def to_dict(self) -> Any:
        """The YAML form read back by `param_from_spec` (space.yaml in the tune folder)."""
        if self.choices is not None:
            return list(self.choices)
        spec: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        scale = "log " if self.log else ""
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{scale}{self.kind} {self.low:g}..{self.high:g}{step}"


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, bool) or value is None:
        raise HeadstartError(f"{where}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    except (TypeError, ValueError):
        raise HeadstartError(f"{where}: {value!r} is not a number") from None


def _choices(key: str, values: Any, where: str) -> Param:
    if not isinstance(values, list) or not values:
        raise HeadstartError(f"{where}: '{key}' choices must be a non-empty list")
    bad = [v for v in values if not isinstance(v, (str, int, float, bool)) and v is not None]
    if bad:
        raise HeadstartError(
            f"{where}: '{key}' choices must be single values (text, numbers, true/false), not {bad[0]!r}"
        )
    if len({repr(v) for v in values}) != len(values):
        raise HeadstartError(f"{where}: '{key}' lists a choice twice")
    return Param(key, choices=tuple(values))


def param_from_spec(key: str, spec: Any, where: str = "search space") -> Param:
    """A Param from its YAML form: a list (choices), {choices: [...]}, or {low, high[, log][, step]}."""
    if isinstance(spec, list):
        return _choices(key, spec, where)
    if not isinstance(spec, dict):
        raise HeadstartError(
            f"{where}: '{key}' needs a range {{low: A, high: B[, log: true][, step: S]}} or a list of choices, got {spec!r}"
        )
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise HeadstartError(f"{where}: '{key}' has choices and {sorted(set(spec) - {'choices'})[0]}; give one")
        return _choices(key, spec["choices"], where)
    unknown = sorted(set(spec) - RANGE_KEYS)
    if unknown or not {"low", "high"} <= set(spec):
        what = f"unknown setting '{unknown[0]}'" if unknown else "a range needs low and high"
        raise HeadstartError(f"{where}: '{key}': {what}; valid: low, high, log, step, or choices")
    low, high = _number(spec["low"], f"{where}: '{key}' low"), _number(spec["high"], f"{where}: '{key}' high")
    step = _number(spec["step"], f"{where}: '{key}' step") if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise HeadstartError(f"{where}: '{key}' log must be true or false")
    if not low < high:
        raise HeadstartError(f"{where}: '{key}' low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise HeadstartError(f"{where}: '{key}' is on a log scale: low must be above 0 (got {low:g})")
    if step is not None and (step <= 0 or log):
        raise HeadstartError(f"{where}: '{key}' step must be above 0 and cannot go with log: true")
    return Param(key, low, high, log, step)


def space_from_dict(values: Any, where: str = "search space") -> list[Param]:
    if not isinstance(values, dict) or not values:
        raise HeadstartError(f"{where}: a search space maps recipe fields (stages.head.lr) to ranges or choices")
    return [param_from_spec(str(key), spec, where) for key, spec in values.items()]


def read_space(path: str | Path) -> list[Param]:
    """The search space in a YAML file (see the module docstring)."""
    return space_from_dict(read_yaml(path, "search space"), str(path))


def space_to_dict(space: list[Param]) -> dict[str, Any]:
    return {param.key: param.to_dict() for param in space}


# ----------------------------------------------------------------------------- recipe fields


def recipe_fields(recipe: Recipe) -> list[str]:
    """Every field of `recipe` as a dotted key: data.image_size, model.head.hidden, stages.head.lr, ..."""
    return list(flatten(recipe.to_dict()))


def check_key(key: str, recipe: Recipe, where: str = "search space") -> None:
    """A one-line error naming close matches unless `key` is a field of `recipe` (or of one it left empty)."""
    fields = recipe_fields(recipe)
    if key in fields or key.startswith(OPEN_SECTIONS):
        return
    values = flatten(recipe.to_dict())
    # A field inside a section the recipe left empty (stages.head.early_stop.patience with early_stop: null).
    if any(key.startswith(f"{field}.") and values[field] is None for field in fields):
        return
    # 'lr' is likely meant as every stage's lr: name those; else the nearest spellings.
    same_name = [field for field in fields if field.endswith(f".{key}")]
    hint = f"; did you mean: {', '.join(same_name[:3])}?" if same_name else close_matches(key, fields, n=3)
    raise HeadstartError(
        f"{where}: '{key}' is not a recipe field{hint}; "
        "name fields as headstart train --dry-run nests them (stages.NAME.lr, model.head.hidden, data.image_size)"
    )


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the field `key` (stages by name: stages.finetune.lr) in a recipe dict."""
    target: dict[str, Any] = values
    parts = key.split(".")
    if parts[0] == "stages":
        rest = key.removeprefix("stages.")
        stage = next((s for s in values["stages"] if rest.startswith(f"{s['name']}.")), None)
        if stage is None:
            names = [s["name"] for s in values["stages"]]
            raise HeadstartError(f"'{key}': no stage named so; stages: {', '.join(names)}")
        target, parts = stage, rest.removeprefix(f"{stage['name']}.").split(".")
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}  # a section the recipe left empty (early_stop: null)
        target = target[part]
    target[parts[-1]] = value
    if key == "model.backbone":
        values["model"]["weights"] = None  # each backbone gets its own default weights source


def with_values(recipe: Recipe, chosen: dict[str, Any], where: str = "search space") -> Recipe:
    """`recipe` with the fields in `chosen` (dotted key -> value) set; a value the recipe refuses is a one-line error."""
    values = recipe.to_dict()
    for key, value in chosen.items():
        set_dotted(values, key, value)
    if "model.weights" in chosen:
        values["model"]["weights"] = chosen["model.weights"]
    return Recipe.from_dict(values, source=where)


def as_field_types(space: list[Param], recipe: Recipe) -> list[Param]:
    """`space` with a range of whole numbers over a field the recipe holds a float in read as a float range
    ({low: 0, high: 1} for mixup searches 0..1, not the integers 0 and 1)."""
    values = flatten(recipe.to_dict())
    return [
        Param(p.key, float(p.low), float(p.high), p.log, None if p.step is None else float(p.step))  # type: ignore[arg-type]
        if p.kind == "int" and isinstance(values.get(p.key), float)
        else p
        for p in space
    ]


def check_space(space: list[Param], recipe: Recipe, where: str = "search space") -> None:
    """Every key names a recipe field and every choice and bound makes a valid recipe, or a one-line error."""
    keys = [param.key for param in space]
    if len(set(keys)) != len(keys):
        raise HeadstartError(f"{where}: '{next(k for k in keys if keys.count(k) > 1)}' is listed twice")
    for param in space:
        check_key(param.key, recipe, where)
        for value in param.examples():
            with_values(recipe, {param.key: value}, f"{where}: {param.key}={value!r}")
