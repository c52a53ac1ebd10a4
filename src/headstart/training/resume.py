"""Continuing a run exactly: where it stopped (ResumePoint), optimizer state by parameter name, RNG states.

Optimizer state is stored by parameter *name*, not by position, so it survives a change of
param groups (a stage that unfreezes more layers starts fresh for those, keeps the rest).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.config.recipe import Recipe
from headstart.core.checkpoint import Checkpoint, ResumeState, load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path
from headstart.core.runs import LAST_FILE, RECIPE_FILE


@dataclass
class ResumePoint:
    """Where an interrupted run stopped: its folder, recipe, and last.pt, written after its last finished epoch."""

    run_dir: Path
    recipe: Recipe
    checkpoint: Checkpoint
    state: ResumeState

    @classmethod
    def read(cls, run_dir: str | Path) -> ResumePoint:
        path = user_path(run_dir)
        if not (path / RECIPE_FILE).is_file():
            raise HeadstartError(f"cannot resume {path}: not a run folder (no recipe.yaml)")
        if not (path / LAST_FILE).is_file():
            raise HeadstartError(
                f"cannot resume {path}: no epoch finished before it stopped (no last.pt); start it again"
            )
        checkpoint = load_checkpoint(path / LAST_FILE)
        if checkpoint.resume is None:
            raise HeadstartError(
                f"cannot resume {path}: its last.pt holds no optimizer state (written by an older headstart)"
            )
        return cls(path, Recipe.from_yaml(path / RECIPE_FILE), checkpoint, checkpoint.resume)

    def stage_done(self, recipe: Recipe) -> bool:
        """Whether the stage it stopped in had ended: its epochs ran, or (with early_stop) it stopped early."""
        stage = recipe.stages[self.state.stage_index]
        ran_all = self.state.epoch >= stage.epoch_budget
        # Only an early-stopping stage can end before its budget; older checkpoints carry no stage_finished.
        finished = self.state.stage_finished
        return (ran_all if finished is None else finished) if stage.early_stop is not None else ran_all

    def finished(self, recipe: Recipe) -> bool:
        return self.state.stage_index == len(recipe.stages) - 1 and self.stage_done(recipe)


def _names_in_order(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """optimizer.state_dict() with parameter names in place of positions."""
    state = optimizer.state_dict()
    names = _names_in_order(optimizer, model)
    return {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [dict(group, params=[names[i] for i in group["params"]]) for group in state["param_groups"]],
    }


def copied(state: Any) -> Any:
    """`state` with every tensor in it cloned: kept for a later write while training changes the originals."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: copied(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(copied(value) for value in state)
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any]) -> None:
    """Restore a by-name state into an optimizer built for the same model; unknown parameters start fresh."""
    current = optimizer.state_dict()
    names = _names_in_order(optimizer, model)
    group_of = {name: group for group in saved["param_groups"] for name in group["params"]}
    groups = []
    for group in current["param_groups"]:
        match = next((group_of[names[i]] for i in group["params"] if names[i] in group_of), None)
        hyper = {k: v for k, v in (match or group).items() if k != "params"}
        groups.append(dict(hyper, params=group["params"]))
    state = {index: saved["state"][name] for index, name in enumerate(names) if name in saved["state"]}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, in types torch.load(weights_only=True) accepts."""
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # the global generator is always MT19937, whose legacy state is a tuple
    kind, keys, position, has_gauss, cached = legacy
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
