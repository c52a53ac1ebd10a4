"""What a checkpoint must hold to continue a run exactly: optimizer state by parameter name, schedule, RNGs.

Optimizer state is stored by parameter *name*, not by position, so it survives a change of
param groups (a stage that unfreezes more layers starts fresh for those, keeps the rest).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn


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
    kind, keys, position, has_gauss, cached = np.random.get_state()
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
