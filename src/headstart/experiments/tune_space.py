"""What `headstart tune` searches when no --space is given, read from the recipe, and how a trial samples a space.

The default space, per stage: the learning rate (log scale, a tenth to ten times the recipe's),
weight decay (log, 1e-5..0.1), label smoothing (0..0.2, single-label data), Mixup alpha (0..0.4) and,
for a stage that trains the top backbone stages (`freeze: top:N`), how many (top:1..top:3, as far as
the backbone has stages); the head's hidden width where the head has a hidden layer; and the
backbone among those whose weights ship in installed packages, when the recipe uses one of them and
leaves the input size to the backbone. The space a tune used is written to its folder as
space.yaml: copy it, edit it, and pass it back with --space to search something else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from headstart.config.describe import flatten
from headstart.config.recipe import Recipe
from headstart.config.search_space import Param, space_to_dict, with_values
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.runs import SWEEP_FILE
from headstart.data.splits import SINGLE
from headstart.tasks.metrics import LOWER_IS_BETTER

log = logging.getLogger("headstart")

LR_SPAN = 10.0  # the default lr range: recipe lr / LR_SPAN .. recipe lr * LR_SPAN
WEIGHT_DECAY = (1e-5, 0.1)
LABEL_SMOOTHING = (0.0, 0.2)
MIXUP = (0.0, 0.4)
MAX_TOP_STAGES = 3
HIDDEN_CHOICES = (128, 256, 512, 1024)
# Fields that say where and on what a copy of the recipe runs, not what it searches: machines may differ in them.
WHERE_FIELDS = (
    "data.path",
    "data.workers",
    "run.out_dir",
    "run.name",
    "run.device",
    "run.feature_cache_memory_mb",
    "run.log",
)


@dataclass
class Search:
    """What a tune searches and where it writes: the base recipe, the space, the monitored score, the folder."""

    base: Recipe
    space: list[Param]
    monitor: str
    folder: Path
    pruner: str = "median"
    quiet: bool = False
    shared: bool = False  # the study lives in a storage other machines may use too (--storage)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial folder name -> its values

    @property
    def direction(self) -> str:
        return "minimize" if self.monitor in LOWER_IS_BETTER else "maximize"

    @property
    def seed(self) -> int:
        return self.base.run.seed

    def trial_name(self, number: int) -> str:
        return f"trial-{number:04d}"

    def run_dir(self, number: int) -> Path:
        return self.folder / self.trial_name(number) / f"seed{self.seed}"

    def recipe_for(self, values: dict[str, Any], number: int) -> Recipe:
        recipe = with_values(self.base, values, f"trial {number}")
        recipe.run.out_dir, recipe.run.name = str(self.folder / self.trial_name(number)), f"seed{self.seed}"
        return recipe

    def fingerprint(self) -> dict[str, Any]:
        """What two invocations must agree on to share a study (paths may differ between machines)."""
        recipe = {k: v for k, v in flatten(self.base.to_dict()).items() if k not in WHERE_FIELDS}
        return {"recipe": recipe, "space": space_to_dict(self.space), "monitor": self.monitor}

    def register(self, number: int, values: dict[str, Any]) -> None:
        """List the trial in sweep.yaml (a sweep's layout: compare and report read the tune folder as one)."""
        self.variants[self.trial_name(number)] = values
        spec = {"recipe": self.base.to_dict(), "variants": self.variants, "seeds": [self.seed]}
        atomic_write(self.folder / SWEEP_FILE, yaml.safe_dump(spec, sort_keys=False).encode())


def backbone_stages(recipe: Recipe) -> int:
    """How many timm layer groups the recipe's backbone has (0 when it has none); built without weights."""
    from headstart.model.build import build_model, resolve_preprocessing
    from headstart.model.freeze import backbone_stages as stages_of

    size = resolve_preprocessing(recipe.data, recipe.model)["image_size"]
    model = build_model(recipe.model.model_copy(update={"weights": "none"}), 2, size)
    try:
        return len(stages_of(model))
    except HeadstartError:  # a backbone without timm layer groups: top:N does not apply
        return 0


def stage_space(recipe: Recipe, task: str) -> list[Param]:
    space: list[Param] = []
    groups: int | None = None
    for stage in recipe.stages:
        at = f"stages.{stage.name}."
        space.append(Param(at + "lr", stage.lr / LR_SPAN, stage.lr * LR_SPAN, log=True))
        space.append(Param(at + "weight_decay", *WEIGHT_DECAY, log=True))
        if task == SINGLE:
            space.append(Param(at + "label_smoothing", *LABEL_SMOOTHING))
        space.append(Param(at + "mixup", *MIXUP))
        if isinstance(stage.freeze, str) and stage.freeze.startswith("top:"):
            groups = backbone_stages(recipe) if groups is None else groups
            depths = tuple(f"top:{n}" for n in range(1, min(MAX_TOP_STAGES, groups) + 1))
            if len(depths) > 1:
                space.append(Param(at + "freeze", choices=depths))
    return space


def default_space(recipe: Recipe, task: str) -> list[Param]:
    """The space searched without --space (see the module docstring); `task` is the data's (single-/multi-label)."""
    from headstart.model.weights import installed_packaged_backbones

    space = stage_space(recipe, task)
    if recipe.model.head.kind != "linear":
        hidden = tuple(sorted({*HIDDEN_CHOICES, recipe.model.head.hidden}))
        space.append(Param("model.head.hidden", choices=hidden))
    packaged = installed_packaged_backbones()
    if recipe.model.backbone in packaged and len(packaged) > 1 and recipe.data.image_size is None:
        space.append(Param("model.backbone", choices=tuple(packaged)))
    return space


def check_backbones(space: list[Param]) -> None:
    """A backbone choice whose weights cannot be had is a one-line error before any trial runs."""
    from headstart.model.weights import unavailable_backbones

    for param in space:
        if param.key == "model.backbone" and param.choices is not None:
            missing = unavailable_backbones([str(choice) for choice in param.choices])
            if missing:
                backbone, reason = next(iter(missing.items()))
                raise HeadstartError(f"search space model.backbone: {backbone}: {reason}")


def suggest(trial: Any, space: list[Param]) -> dict[str, Any]:
    """The trial's value for every field of the space (Optuna's suggest_* by the field's kind)."""
    values: dict[str, Any] = {}
    for param in space:
        if param.choices is not None:
            values[param.key] = trial.suggest_categorical(param.key, list(param.choices))
        elif param.kind == "int":
            step = int(param.step or 1)
            values[param.key] = trial.suggest_int(param.key, int(param.low), int(param.high), step=step, log=param.log)  # type: ignore[arg-type]
        else:
            values[param.key] = trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)
    return values
