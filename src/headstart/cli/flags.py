"""Command-line flags read from the recipe's schema: a new recipe field is a new flag, with no edit here.

Every scalar field of `data`, `model`, `model.head` and `run` becomes `--field-name` (choices and
type from its annotation; booleans that default true become `--no-field-name`). Every field of a
stage becomes a stage flag taking one VALUE for every stage or NAME=VALUE,NAME=VALUE by stage name
(a field holding a section, such as early_stop, becomes one flag per field of it:
`--early-stop-patience`). RENAMED lists the few flags whose names predate this rule; SKIPPED the
fields a flag cannot express (they are set in a recipe file).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from headstart.config.defaults import default_recipe
from headstart.config.recipe import DataConfig, HeadConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.core.errors import HeadstartError

# (section path, field) -> flag name, where the flag is older than the rule or the name is taken.
RENAMED = {
    ("run", "out_dir"): "out",
    ("model.head", "kind"): "head",
    ("model.head", "hidden"): "head-hidden",
    ("model.head", "dropout"): "head-dropout",
    ("stage", "augment"): "stage-augment",  # --augment is data.augment
}
# Fields with no flag: the positional DATA, values a flag cannot spell, and a stage's name.
SKIPPED = {
    ("data", "path"),
    ("data", "mean"),
    ("data", "std"),
    ("model", "backbone_args"),
    ("model", "adapters"),
    ("model", "head"),
    ("stage", "name"),
}
HELP = {
    "backbone": "any timm model name (see: headstart backbones)",
    "weights": "hub | package | none | file:PATH",
    "out": "parent folder of run folders (default runs/)",
    "name": "run (or sweep) folder name",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "test-fraction": "carve a test split from class folders (scored once)",
    "balance": "class imbalance remedy (default: auto)",
    "feature-views": "augmented views to cache for stages on cached features",
    "monitor": "what best.pt is chosen by (and early stopping watches)",
    "compile": "torch.compile for stages that train the backbone",
    "log": "experiment tracker; repeat for several",
    "accumulate": "optimizer step every K batches (effective batch K x batch size)",
    "ema-decay": "weight EMA decay, e.g. 0.999 (validation and best.pt use the averaged weights)",
    "budget": "wall-clock budget (90s, 10m, 1h): the run is planned to fit it",
    "unlabeled": "FOLDER or CSV of unlabelled images to pseudo-label and train on too",
    "add-labeled": "CSV of path,label to add to train (suggest's to_label.csv); repeat for more",
}
SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "model.head": HeadConfig,
    "run": RunConfig,
}


@dataclass
class Flag:
    """One recipe field on the command line: where it goes and how argparse reads it."""

    section: str  # 'data', 'model', 'model.head', 'run', or 'stage'
    path: tuple[str, ...]  # field names from the section (two for a stage section's field: early_stop.patience)
    flag: str
    choices: tuple | None
    kind: type  # int / float / str, bool for switches, list for repeatable choices
    default: Any

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None was allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def type_and_choices(annotation: Any) -> tuple[type | None, tuple | None]:
    """(argparse type, choices) for a field's annotation; (None, None) for what a flag cannot spell."""
    annotation, _ = unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str, typing.get_args(annotation)
    if origin is list and typing.get_origin(typing.get_args(annotation)[0]) is Literal:
        return list, typing.get_args(typing.get_args(annotation)[0])
    if origin is list and typing.get_args(annotation)[0] is str:
        return list, None  # repeatable: --add-labeled A.csv --add-labeled B.csv
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if bool in members and all(m is bool or typing.get_origin(m) is Literal for m in members):
            # bool | 'auto': the words the recipe's validator reads
            return str, (*(v for m in members if m is not bool for v in typing.get_args(m)), "true", "false")
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return str, None  # int | 'auto', str | int: the recipe's validator reads the text
    if annotation in (bool, int, float, str):
        return annotation, None
    return None, None


def section_flags() -> list[Flag]:
    flags = []
    for section, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            kind, choices = type_and_choices(info.annotation)
            if (section, name) in SKIPPED or kind is None:
                continue
            flag = RENAMED.get((section, name), name.replace("_", "-"))
            flags.append(Flag(section, (name,), flag, choices, kind, info.default))
    return flags


def stage_flags() -> list[Flag]:
    flags = []
    for name, info in Stage.model_fields.items():
        if ("stage", name) in SKIPPED:
            continue
        inner, _ = unwrap(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            for sub, sub_info in inner.model_fields.items():
                choices = type_and_choices(sub_info.annotation)[1]
                flags.append(Flag("stage", (name, sub), f"{name}-{sub}".replace("_", "-"), choices, str, None))
            continue
        choices = type_and_choices(info.annotation)[1]
        flags.append(Flag("stage", (name,), RENAMED.get(("stage", name), name.replace("_", "-")), choices, str, None))
    return flags


def with_default(help_text: str | None, default: Any) -> str | None:
    """The help line with the recipe's default spelled out, where the field has one that is not 'auto' (None)."""
    if default is None or default is PydanticUndefined or isinstance(default, bool) or default == []:
        return help_text
    if help_text and "default" in help_text:
        return help_text
    # A default with blanks at its ends (data.label_delim's space) is quoted, or the help shows nothing.
    value = repr(default) if isinstance(default, str) and default != default.strip() else default
    shown = f"(default: {value})".replace("%", "%%")  # argparse %-formats help lines
    return f"{help_text} {shown}" if help_text else shown


def add_recipe_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> argparse._ArgumentGroup:
    """Every recipe flag but `exclude`'s (a command's own flag of that name), grouped by section; returns the 'run' group."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in section_flags():
        if flag.flag in exclude:
            continue
        group = groups.setdefault(flag.section.split(".")[0], parser.add_argument_group(flag.section.split(".")[0]))
        option, help_text = f"--{flag.flag}", with_default(HELP.get(flag.flag), flag.default)
        if flag.kind is bool:
            negative = flag.default is True
            option = f"--no-{flag.flag}" if negative else option
            group.add_argument(option, dest=flag.dest, action="store_const", const=not negative, help=help_text)
        elif flag.kind is list:
            group.add_argument(option, dest=flag.dest, action="append", choices=flag.choices, help=help_text)
        else:
            group.add_argument(option, dest=flag.dest, type=flag.kind, choices=flag.choices, help=help_text)
    groups["model"].add_argument(
        "--adapter",
        action="append",
        help="noise[:SIGMA] | resize:FACTORx | resize:SIZE | conv[:KERNEL]; repeat to chain",
    )
    group = parser.add_argument_group("stages (VALUE for every stage, or NAME=VALUE,NAME=VALUE by stage name)")
    for flag in stage_flags():
        shown = f" ({' | '.join(map(str, flag.choices))})" if flag.choices else ""
        group.add_argument(f"--{flag.flag}", dest=flag.dest, metavar="SPEC", help=f"stage {'.'.join(flag.path)}{shown}")
    groups["run"].add_argument("--quiet", action="store_true")
    return groups["run"]


def parse_adapter(spec: str) -> dict[str, Any]:
    """'noise' | 'noise:0.05' | 'resize:2x' | 'resize:96' | 'conv' | 'conv:5'."""
    kind, _, value = spec.partition(":")
    try:
        if kind == "noise":
            return {"kind": "noise", **({"sigma": float(value)} if value else {})}
        if kind == "resize" and value:
            return (
                {"kind": "resize", "factor": float(value[:-1])}
                if value.endswith("x")
                else {"kind": "resize", "size": int(value)}
            )
        if kind == "conv":
            return {"kind": "conv", **({"kernel_size": int(value)} if value else {})}
    except ValueError:
        pass  # 'resize:abcx', 'noise:abc', 'conv:x': the same one-line error as an unknown kind
    raise HeadstartError(
        f"--adapter '{spec}': valid forms are noise[:SIGMA], resize:FACTORx, resize:SIZE, conv[:KERNEL]"
    )


def section_of(values: dict[str, Any], section: str) -> dict[str, Any]:
    target = values
    for part in section.split("."):
        target = target.setdefault(part, {})
    return target


def recipe_from_args(args: argparse.Namespace, base: Recipe | None = None) -> Recipe:
    """The recipe a command line asks for: the base (a --recipe file, or the default for DATA) with the flags applied."""
    if base is not None:
        recipe = base
    elif getattr(args, "recipe", None):
        recipe = Recipe.from_yaml(args.recipe)
    else:
        recipe = default_recipe(args.data)
    values = recipe.to_dict()
    if args.data is not None:
        values["data"]["path"] = args.data
    for flag in section_flags():
        value = getattr(args, flag.dest, None)
        if value is not None:
            section_of(values, flag.section)[flag.path[0]] = value
    if args.backbone is not None and args.weights is None:
        values["model"]["weights"] = None  # re-resolve the source for the new backbone
    if args.adapter:
        values["model"]["adapters"] = [parse_adapter(spec) for spec in args.adapter]
    recipe = Recipe.from_dict(values, source="command line")
    for flag in stage_flags():
        spec = getattr(args, flag.dest, None)
        if spec is not None:
            recipe = set_stage_field(recipe, flag.path, spec, f"--{flag.flag}")
    return recipe


def set_stage_field(recipe: Recipe, field: str | tuple[str, ...], spec: str, flag: str | None = None) -> Recipe:
    """Apply a stage flag: 'VALUE' sets every stage, 'NAME=VALUE,NAME=VALUE' sets stages by name.

    Example: set_stage_field(recipe, "epochs", "head=2,finetune=5"); a section's field is a tuple path,
    set_stage_field(recipe, ("early_stop", "patience"), "3").
    """
    path = (field,) if isinstance(field, str) else tuple(field)
    flag = flag or "--" + "-".join(path).replace("_", "-")
    names = [stage.name for stage in recipe.stages]
    if "=" in spec:
        parts = [part for part in spec.split(",") if part]
        if not all("=" in part and part.split("=", 1)[0] for part in parts):
            raise HeadstartError(f"{flag} {spec!r}: give one VALUE for every stage, or NAME=VALUE,NAME=VALUE")
        assignments = dict(part.split("=", 1) for part in parts)
        unknown = [name for name in assignments if name not in names]
        if unknown:
            raise HeadstartError(f"{flag}: no stage named {unknown[0]!r}; stages: {', '.join(names)}")
    else:
        assignments = {name: spec for name in names}
    values = recipe.to_dict()
    for stage in values["stages"]:
        if stage["name"] in assignments:
            target = stage
            for part in path[:-1]:
                if not isinstance(target.get(part), dict):
                    target[part] = {}  # a section the stage left empty (early_stop: null)
                target = target[part]
            target[path[-1]] = assignments[stage["name"]]
    return Recipe.from_dict(values, source=flag)
