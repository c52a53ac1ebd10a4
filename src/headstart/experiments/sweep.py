"""Sweeps: one recipe run with switches changed, every combination times every seed, each in its own run folder.

    headstart sweep RECIPE --vary bn=frozen,affine,train --vary freeze=blocks.4,blocks.5 --seeds 3
    headstart sweep SWEEP.yaml              # recipe, vary / variants and seeds in one file

Layout: SWEEP_DIR/sweep.yaml (what is swept), SWEEP_DIR/<variant>/seed<N>/ (ordinary run folders),
then the comparison (headstart.experiments.compare) in SWEEP_DIR. Running the same sweep again continues it:
finished runs are skipped, an interrupted one is resumed from its last finished epoch.

Keys name recipe fields: a stage field (`bn`: every stage), `STAGE.FIELD` (`finetune.bn`),
a section path (`model.head.dropout`, `data.augment`, `model.backbone_args.batch_norm`), or a
data/model/run field by its own name (`augment`, `backbone`). Values are read as YAML: `0.5`,
`true`, `null`, `[64, 128]`.

Example:
    >>> result = headstart.sweep("recipes/000_bn_trainable_offline.yaml", vary={"top-blocks.bn": ["frozen", "train"]}, seeds=3)
    >>> print(result.comparison.markdown)
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from headstart.config.defaults import as_recipe
from headstart.config.recipe import DataConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.core.errors import HeadstartError, close_matches
from headstart.core.fileio import atomic_write
from headstart.core.paths import safe_component, user_path
from headstart.core.runs import ERROR_FILE, LAST_FILE, RUN_FILES, SWEEP_FILE
from headstart.core.yamlfile import parse, read_yaml
from headstart.experiments.compare import compare
from headstart.training.resume import ResumePoint
from headstart.training.session import ensure_console
from headstart.training.train import train

log = logging.getLogger("headstart")

SECTIONS: dict[str, type[BaseModel]] = {"data": DataConfig, "model": ModelConfig, "run": RunConfig}


@dataclass
class Variant:
    name: str
    changes: dict[str, Any]


@dataclass
class SweepSpec:
    """What a sweep runs: the base recipe, the variants, the seeds."""

    base: Recipe
    variants: list[Variant]
    seeds: list[int]

    def recipe_for(self, variant: Variant, seed: int, sweep_dir: Path) -> Recipe:
        values = self.base.to_dict()
        for key, value in variant.changes.items():
            set_field(values, key, value)
        values["run"].update(out_dir=str(sweep_dir / variant.name), name=f"seed{seed}", seed=seed)
        return Recipe.from_dict(values, source=f"sweep variant '{variant.name}'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.base.to_dict(),
            "variants": {v.name: v.changes for v in self.variants},
            "seeds": self.seeds,
        }


@dataclass
class SweepResult:
    path: Path
    runs: dict[str, list[Path]] = field(default_factory=dict)  # variant -> run folders
    failed: dict[str, str] = field(default_factory=dict)  # run folder -> error
    comparison: Any = None


# ----------------------------------------------------------------------------- keys and values


def parse_value(text: str) -> Any:
    try:
        value = parse(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    return value


def parse_vary(spec: str) -> tuple[str, list[Any]]:
    """'bn=frozen,affine,train' -> ('bn', ['frozen', 'affine', 'train'])."""
    key, sep, values = spec.partition("=")
    if not sep or not key or not values:
        raise HeadstartError(
            f"--vary '{spec}': write KEY=VALUE1,VALUE2 (e.g. bn=frozen,train or model.head.dropout=0,0.5)"
        )
    return key.strip(), [parse_value(v.strip()) for v in _split_top_level(values)]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so 'widths=[8,16],[16,32]' gives two lists."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def set_field(values: dict[str, Any], key: str, value: Any) -> None:
    """Set one recipe field named by a sweep key (see the module docstring) in a recipe dict."""
    parts = key.split(".")
    stages = values["stages"]
    stage_names = [stage["name"] for stage in stages]
    if parts[0] == "stages" and len(parts) == 3:
        parts = parts[1:]
    # A name both a stage and a section hold (augment) means the section's; a stage's own is STAGE.augment.
    in_section = any(parts[0] in section.model_fields for section in SECTIONS.values())
    if len(parts) == 1 and parts[0] in Stage.model_fields and not in_section:
        for stage in stages:
            stage[parts[0]] = value
        return
    if len(parts) == 2 and parts[0] in stage_names:
        if parts[1] not in Stage.model_fields:
            raise HeadstartError(
                f"sweep key '{key}': stages have no field '{parts[1]}'{close_matches(parts[1], Stage.model_fields)}"
            )
        stages[stage_names.index(parts[0])][parts[1]] = value
        return
    if len(parts) == 1:
        owners = [name for name, section in SECTIONS.items() if parts[0] in section.model_fields]
        if owners:
            parts = [owners[0], parts[0]]
    if parts[0] not in SECTIONS or len(parts) < 2:
        valid = sorted(set(Stage.model_fields) | {f for s in SECTIONS.values() for f in s.model_fields})
        raise HeadstartError(
            f"sweep key '{key}' names no recipe field{close_matches(parts[0], valid + stage_names)}; "
            f"use a stage field (bn), STAGE.FIELD ({stage_names[0] if stage_names else 'head'}.lr), or a path (model.head.dropout)"
        )
    target = values
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value
    if parts[:2] == ["model", "backbone"] and "weights" not in key:
        values["model"]["weights"] = None  # each backbone gets its own default weights source


def variant_name(changes: dict[str, Any]) -> str:
    text = "_".join(
        f"{key.split('.')[-1] if len(changes) > 1 else key}-{_short(value)}" for key, value in changes.items()
    )
    return re.sub(r"[^A-Za-z0-9._=+-]+", "", text)[:80] or "base"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_short(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}{_short(v)}" for k, v in value.items())
    return str(value)


def expand(
    vary: dict[str, list[Any]] | None = None, variants: dict[str, dict[str, Any]] | None = None
) -> list[Variant]:
    """The cross product of `vary`, or the named `variants` (each crossed with `vary` if both are given)."""
    named = [Variant(name, dict(changes)) for name, changes in (variants or {}).items()] or [Variant("", {})]
    keys = list((vary or {}).keys())
    crossed = [dict(zip(keys, combo)) for combo in itertools.product(*[(vary or {})[k] for k in keys])] or [{}]
    result = []
    for base, changes in itertools.product(named, crossed):
        merged = {**base.changes, **changes}
        name = "_".join(part for part in (base.name, variant_name(changes) if changes else "") if part) or "base"
        result.append(Variant(safe_component(name, "sweep variant name"), merged))
    names = [v.name for v in result]
    if len(set(names)) != len(names):
        raise HeadstartError(
            f"two sweep variants share the name '{next(n for n in names if names.count(n) > 1)}'; name them in a variants: section"
        )
    return result


MAX_SEEDS = 1000


def seed_list(seeds: int | list[int] | str, base_seed: int) -> list[int]:
    if isinstance(seeds, str):
        try:
            seeds = [int(s) for s in seeds.split(",")] if "," in seeds else int(seeds)
        except ValueError:
            raise HeadstartError(f"--seeds {seeds!r}: give a count like 3, or seeds like 0,1,2") from None
    if isinstance(seeds, int):
        if not 1 <= seeds <= MAX_SEEDS:
            raise HeadstartError(f"--seeds {seeds}: give a count from 1 to {MAX_SEEDS}, or a list like 0,1,2")
        return [base_seed + i for i in range(seeds)]
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return list(seeds)
    raise HeadstartError(f"seeds {seeds!r}: give a count like 3, or a list like [0, 1, 2]")


def read_sweep_file(path: str | Path) -> tuple[Recipe, dict, dict, Any, str | None]:
    """A sweep file: recipe (a path relative to the file, or inline), vary, variants, seeds."""
    path = Path(path)
    values = read_yaml(path, "sweep file") or {}
    if not isinstance(values, dict):
        raise HeadstartError(f"{path}: a sweep file is a mapping with recipe, vary or variants, seeds, name")
    allowed = {"recipe", "vary", "variants", "seeds", "name"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise HeadstartError(f"{path}: unknown sweep field '{unknown[0]}'; valid: {', '.join(sorted(allowed))}")
    recipe = values.get("recipe")
    if isinstance(recipe, str):
        recipe_path = (path.parent / recipe) if not Path(recipe).is_absolute() else Path(recipe)
        base = Recipe.from_yaml(recipe_path)
    else:
        base = Recipe.from_dict(recipe or {}, source=str(path))
    return base, values.get("vary") or {}, values.get("variants") or {}, values.get("seeds", 1), values.get("name")


def is_sweep_file(path: str | Path) -> bool:
    try:
        values = read_yaml(path, "sweep file")
    except HeadstartError:  # read again as a recipe, whose reader names the problem
        return False
    return isinstance(values, dict) and ("vary" in values or "variants" in values)


# ----------------------------------------------------------------------------- running


RUN_STATUS_TEXT = {
    "done": "finished already, skipped",
    "partial": "resuming",
    "new": "starting",
    "broken": "last.pt unreadable, left alone",
}


def run_status(run_dir: Path, recipe: Recipe) -> str:
    """'done', 'partial' (resumable), 'new', or 'broken' (a last.pt that cannot be read: left for the user)."""
    if not (run_dir / LAST_FILE).is_file():
        return "new"
    try:
        return "done" if ResumePoint.read(run_dir).finished(recipe) else "partial"
    except HeadstartError:
        return "broken"


def clear_unfinished(run_dir: Path) -> None:
    """Remove what an attempt that finished no epoch wrote; anything else in the folder is the user's, so it stays.

    A sweep only ever deletes files of its own run folders, by name, never a whole folder.
    """
    if not run_dir.exists():
        return
    for path in run_dir.iterdir():
        if path.is_file() and not path.is_symlink() and (path.name in RUN_FILES or path.name.startswith(".")):
            path.unlink()
    left = sorted(p.name for p in run_dir.iterdir())
    if left:
        raise HeadstartError(
            f"{run_dir} holds files a run did not write ({', '.join(left[:3])}); move them, then rerun the sweep"
        )
    run_dir.rmdir()


def run_one(run_dir: Path, recipe: Recipe, where: str, result: SweepResult, quiet: bool) -> None:
    """Train, resume or skip one run of a sweep by its folder's state; a failure is recorded, not raised."""
    status = run_status(run_dir, recipe)
    log.info("sweep %s: %s: %s", result.path.name, where, RUN_STATUS_TEXT[status])
    if status == "done":
        return
    if status == "broken":
        reason = f"{run_dir / 'last.pt'} cannot be read; left as it is (remove that run folder to run it again)"
        log.warning("sweep: %s: %s", where, reason)
        result.failed[str(run_dir)] = reason
        return
    # A failure recorded by an earlier attempt no longer stands once the run is tried again.
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        if status == "partial":
            train(resume=run_dir, quiet=quiet)
        else:
            clear_unfinished(run_dir)  # started but no epoch finished
            train(recipe, quiet=quiet)
    except HeadstartError as err:
        # One variant failing (a learning rate that diverges) is a result, not the end of the sweep.
        log.warning("sweep: %s failed: %s", where, err)
        result.failed[str(run_dir)] = str(err)
        atomic_write(run_dir / ERROR_FILE, f"{err}\n".encode())


def folder_stem(recipe: Recipe) -> str:
    """What a sweep, tune or cv folder is named after: run.name, else the data's name ('.' is the folder it names)."""
    if recipe.run.name:
        return recipe.run.name
    return Path(os.path.abspath(user_path(recipe.data.path))).stem if recipe.data.path else "digits"


def experiment_folder(recipe: Recipe, out: str | Path | None, name: str | None, kind: str) -> Path:
    """OUT/NAME-KIND (runs/photos-tune, runs/photos-cv): NAME from --name, else folder_stem; one safe component."""
    stem = name or folder_stem(recipe)
    return user_path(out or recipe.run.out_dir) / safe_component(f"{stem}-{kind}", f"{kind} folder name")


def sweep(
    recipe: Recipe | str | Path | dict | None = None,
    *,
    vary: dict[str, list[Any]] | None = None,
    variants: dict[str, dict[str, Any]] | None = None,
    seeds: int | list[int] | str = 1,
    out: str | Path | None = None,
    name: str | None = None,
    quiet: bool = False,
) -> SweepResult:
    """Run every variant with every seed (skipping finished runs, resuming interrupted ones), then compare them."""
    ensure_console(quiet)
    base = as_recipe(recipe)
    spec = SweepSpec(base, expand(vary, variants), seed_list(seeds, base.run.seed))
    # Every variant must be a valid recipe before the first one trains.
    folder = safe_component(name or f"sweep-{folder_stem(base)}", "sweep folder name")  # --name never climbs out
    sweep_dir = user_path(out or base.run.out_dir) / folder
    recipes = {(v.name, s): spec.recipe_for(v, s, sweep_dir) for v in spec.variants for s in spec.seeds}
    spec_file = sweep_dir / SWEEP_FILE
    written = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    if spec_file.is_file() and spec_file.read_text() != written:
        raise HeadstartError(f"{sweep_dir} holds a different sweep; give another --name, or remove that folder")
    atomic_write(spec_file, written.encode())

    result = SweepResult(sweep_dir)
    for number, ((variant, seed), run_recipe) in enumerate(recipes.items(), start=1):
        run_dir = sweep_dir / variant / f"seed{seed}"
        result.runs.setdefault(variant, []).append(run_dir)
        where = f"run {number}/{len(recipes)}, {variant} seed {seed}"
        run_one(run_dir, run_recipe, where, result, quiet)
    result.comparison = compare([sweep_dir])
    return result
