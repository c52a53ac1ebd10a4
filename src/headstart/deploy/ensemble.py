"""Several runs' models as one: the mean of their calibrated probabilities (cv --ensemble: the fold models).

    headstart cv DATA --folds 5 --ensemble          ->  CV/ensemble/model.onnx + model.onnx.json
    headstart cv DATA --folds 5 --ensemble export   ->  CV/ensemble/model.pt2 + model.pt2.json

Each run's best.pt model gets its fitted temperature folded into its output layer (as `export` does),
so each gives its calibrated probabilities; the ensemble returns the log of their mean. The softmax of
that output, which headstart.load, predict and any runtime apply, is the mean itself, and its argmax
the ensemble's answer. Single-label models only (a multi-label model's tags each have their own
threshold per run), and without the unknown-image detector: each run fitted its own on its own
training images, and no one threshold holds for their average.

Example:
    >>> path = export_ensemble(["runs/x-cv/fold1/seed0", "runs/x-cv/fold2/seed0"], "runs/x-cv/ensemble")
    >>> headstart.load(path).predict(["ant.jpg"])
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.core.checkpoint import Checkpoint, load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.runs import resolve_checkpoint
from headstart.deploy.export import SIDECAR_FORMAT, sidecar_path, write_module
from headstart.deploy.formats import FORMATS
from headstart.model.build import fold_temperature, model_from_checkpoint
from headstart.tasks.registry import Task, task_named

log = logging.getLogger("headstart")

SMALLEST_PROBABILITY = 1e-12  # log(0) would be -inf: a class no member gives any probability stays finite


class MeanProbabilities(nn.Module):
    """Calibrated classifiers -> log of their mean probabilities (a softmax of the output gives the mean back)."""

    def __init__(self, models: Sequence[nn.Module], task: Task):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # 'x': the exporters' dynamic batch is named after it
        mean = torch.stack([self.task.probabilities(member(x)) for member in self.members]).mean(0)
        return torch.log(mean.clamp_min(SMALLEST_PROBABILITY))


def ensemble_formats() -> list[str]:
    """The formats an ensemble can be written in: those with a file headstart runs back."""
    return [name for name, chosen in FORMATS.items() if chosen.write is not None and chosen.load is not None]


def check_members(checkpoints: list[Checkpoint], names: list[str]) -> None:
    first = checkpoints[0]
    if first.task != "single-label":
        raise HeadstartError(
            "--ensemble averages single-label models' probabilities; a multi-label model's tags have a threshold per run"
        )
    for checkpoint, name in zip(checkpoints[1:], names[1:]):
        if checkpoint.classes != first.classes or checkpoint.preprocessing != first.preprocessing:
            raise HeadstartError(
                f"{name} has other classes or preprocessing than {names[0]}: only models of one recipe average"
            )


def export_ensemble(run_dirs: list[str | Path], out: str | Path, format: str = "onnx") -> Path:
    """Write the runs' best models as one model file in `out` (model.onnx, model.pt2, ...) with its description."""
    if format not in ensemble_formats():
        raise HeadstartError(f"ensemble format '{format}': valid: {', '.join(ensemble_formats())}")
    if len(run_dirs) < 2:
        raise HeadstartError("an ensemble needs two or more runs")
    paths = [resolve_checkpoint(run) for run in run_dirs]
    checkpoints = [load_checkpoint(path) for path in paths]
    names = [f"{path.parent.parent.name}/{path.parent.name}" for path in paths]  # fold1/seed0: no local path
    check_members(checkpoints, names)
    members = []
    for checkpoint in checkpoints:
        model = model_from_checkpoint(checkpoint)
        if checkpoint.temperature is not None:
            fold_temperature(model, checkpoint.temperature)
        members.append(model)
    first = checkpoints[0]
    ensemble = MeanProbabilities(members, task_named(first.task)).eval()
    chosen = FORMATS[format]
    target = Path(out) / chosen.file_name
    described = description(checkpoints, names, format)
    write_module(chosen, ensemble, first.preprocessing["image_size"], target, described)  # inside too: tflite
    atomic_write(sidecar_path(target), json.dumps(described, indent=1).encode())
    log.info(
        "ensemble of %d models: %s (%s), its preprocessing in %s",
        len(members),
        target,
        format,
        sidecar_path(target).name,
    )
    return target


def description(checkpoints: list[Checkpoint], names: list[str], runtime: str) -> dict[str, Any]:
    first = checkpoints[0]
    size = first.preprocessing["image_size"]
    return {
        "format": SIDECAR_FORMAT,
        "runtime": runtime,
        "classes": first.classes,
        "preprocessing": first.preprocessing,
        "input": f"image: float32 [N, 3, {size}, {size}], resized, centre-cropped and normalised with mean/std as in preprocessing",
        "output": f"float32 [N, {len(first.classes)}]: log of the members' mean calibrated probability (its softmax is that mean)",
        "backbone": first.recipe["model"]["backbone"],
        "ensemble": [
            {"checkpoint": f"{name}/best.pt", "temperature": c.temperature, "val_acc": c.val_acc}
            for name, c in zip(names, checkpoints)
        ],
    }
