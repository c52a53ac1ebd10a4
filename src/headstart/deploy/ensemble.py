"""Several runs' models as one: the mean of their calibrated probabilities (cv --ensemble: the fold models;
train --budget: one model per installed backbone).

    headstart cv DATA --folds 5 --ensemble          ->  CV/ensemble/model.onnx + model.onnx.json
    headstart cv DATA --folds 5 --ensemble export   ->  CV/ensemble/model.pt2 + model.pt2.json
    ensemble.json in a run folder                   ->  headstart.load / predict / serve / export of that folder

Each run's best.pt model gets its fitted temperature folded into its output layer (as `export` does),
so each gives its calibrated probabilities; the ensemble returns the log of their mean. The softmax of
that output, which headstart.load, predict and any runtime apply, is the mean itself, and its argmax
the ensemble's answer. Single-label models only (a multi-label model's tags each have their own
threshold per run). Unknown images (train --budget's ensemble only): each member's detector score in
units of its own threshold, averaged over the members, above a threshold fitted on the ensemble's val
split (ensemble.json's "unknown"), flags an image, and an exported file of the ensemble returns that
score as a second output with the threshold in its description; cv's fold models have no shared val
split to fit it on. Members may differ in input size
and normalisation (Lite0 224 px, Lite2 260 px): the ensemble takes the largest member's preprocessing
and, inside the model, resizes and renormalises the batch for each member that differs, so one input
serves all.

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
import torch.nn.functional as F
from torch import nn

from headstart.core.checkpoint import Checkpoint, load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.paths import user_path
from headstart.core.runs import resolve_checkpoint
from headstart.deploy.formats import FORMATS
from headstart.deploy.unknown import RuleFields, description_fields, detector_of, scored_model
from headstart.deploy.writing import SIDECAR_FORMAT, sidecar_path, write_module
from headstart.model.build import fold_temperature, model_from_checkpoint
from headstart.tasks.registry import Task, task_named
from headstart.tasks.unknown import UnknownRule

log = logging.getLogger("headstart")

SMALLEST_PROBABILITY = 1e-12  # log(0) would be -inf: a class no member gives any probability stays finite
ENSEMBLE_FILE = "ensemble.json"  # in a run folder: its model is the mean of these member runs' models
# How the ensemble's unknown-image score is made from its members' (each fitted on its own features).
ENSEMBLE_METHOD = "mean of the members' mahalanobis-l2 scores over their thresholds"


class MeanProbabilities(nn.Module):
    """Calibrated classifiers -> log of their mean probabilities (a softmax of the output gives the mean back).

    Given the members' detector thresholds, each member returns (logits, unknown score) and so does
    the ensemble: the members' scores, each divided by its own threshold, averaged.
    """

    thresholds: torch.Tensor | None

    def __init__(self, models: Sequence[nn.Module], task: Task, thresholds: Sequence[float] | None = None):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.task = task
        self.register_buffer("thresholds", None if thresholds is None else torch.tensor(thresholds).view(-1, 1))

    @property
    def score_output(self) -> bool:
        """Whether it returns (log mean probabilities, unknown score): model.build.returns_score asks."""
        return self.thresholds is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # 'x': the exporters' dynamic batch is named after it
        outputs = [member(x) for member in self.members]
        logits = [output[0] for output in outputs] if self.thresholds is not None else outputs
        mean = torch.stack([self.task.probabilities(member_logits) for member_logits in logits]).mean(0)
        mean_log = torch.log(mean.clamp_min(SMALLEST_PROBABILITY))
        if self.thresholds is None:
            return mean_log
        scores = torch.stack([output[1].float() for output in outputs]) / self.thresholds.clamp_min(1e-12)
        return mean_log, scores.mean(0)


class Adapted(nn.Module):
    """A member whose preprocessing differs from the ensemble's: the batch is resized and renormalised to its own.

    The input was normalised with the ensemble's mean/std; x * std_e / std_m + (mean_e - mean_m) / std_m is the
    same pixels normalised with the member's. Bilinear resizing without antialiasing, which every exporter
    writes (ONNX has none before opset 18); the packaged backbones' sizes differ by at most a seventh.
    """

    def __init__(self, model: nn.Module, size: int, own: dict[str, Any], ensemble: dict[str, Any]):
        super().__init__()
        self.model = model
        self.size = size
        own_mean, own_std = (torch.tensor(own[key], dtype=torch.float32).view(1, 3, 1, 1) for key in ("mean", "std"))
        mean, std = (torch.tensor(ensemble[key], dtype=torch.float32).view(1, 3, 1, 1) for key in ("mean", "std"))
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", std / own_std)
        self.register_buffer("shift", (mean - own_mean) / own_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x * self.scale + self.shift)


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
        if checkpoint.classes != first.classes:
            raise HeadstartError(f"{name} has other classes than {names[0]}: only models of one data set average")


def largest_input(checkpoints: list[Checkpoint]) -> Checkpoint:
    """The member whose preprocessing the ensemble takes: the largest input (smaller members resize it down)."""
    return max(checkpoints, key=lambda checkpoint: checkpoint.preprocessing["image_size"])


def ensemble_model(
    run_dirs: Sequence[str | Path], scored: bool = False
) -> tuple[MeanProbabilities, list[Checkpoint], list[str]]:
    """(the runs' best models as one averaging their calibrated probabilities, their checkpoints, their names).

    `scored`: with the unknown-image score as a second output, where every member has a detector.
    """
    if len(run_dirs) < 2:
        raise HeadstartError("an ensemble needs two or more runs")
    paths = [resolve_checkpoint(run) for run in run_dirs]
    checkpoints = [load_checkpoint(path) for path in paths]
    names = [f"{path.parent.parent.name}/{path.parent.name}" for path in paths]  # fold1/seed0: no local path
    check_members(checkpoints, names)
    detectors = [detector_of(checkpoint) for checkpoint in checkpoints]
    scored = scored and all(detector is not None for detector in detectors)
    shared = largest_input(checkpoints).preprocessing
    members: list[nn.Module] = []
    for checkpoint, detector in zip(checkpoints, detectors, strict=True):
        model = model_from_checkpoint(checkpoint)
        if checkpoint.temperature is not None:
            fold_temperature(model, checkpoint.temperature)
        member = scored_model(model, detector) if scored else model
        own = checkpoint.preprocessing
        same = all(own[key] == shared[key] for key in ("image_size", "mean", "std"))
        members.append(member if same else Adapted(member, own["image_size"], own, shared))
    thresholds = [detector.threshold for detector in detectors if detector is not None] if scored else None
    return MeanProbabilities(members, task_named(checkpoints[0].task), thresholds).eval(), checkpoints, names


def export_ensemble(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    format: str = "onnx",
    target: Path | None = None,
    unknown: UnknownRule | None = None,
) -> Path:
    """Write the runs' best models as one model file in `out` (model.onnx, model.pt2, ...), or at `target`, with its description.

    `unknown`: the threshold fitted on the ensemble's score (ensemble.json); the file then returns that score too.
    """
    if format not in ensemble_formats():
        raise HeadstartError(f"ensemble format '{format}': valid: {', '.join(ensemble_formats())}")
    ensemble, checkpoints, names = ensemble_model(run_dirs, scored=unknown is not None)
    first = largest_input(checkpoints)
    chosen = FORMATS[format]
    target = target or Path(out) / chosen.file_name
    described = description(checkpoints, names, format, unknown if ensemble.score_output else None)
    write_module(chosen, ensemble, first.preprocessing["image_size"], target, described)  # inside too: tflite
    atomic_write(sidecar_path(target), json.dumps(described, indent=1).encode())
    log.info(
        "ensemble of %d models: %s (%s), its preprocessing in %s",
        len(run_dirs),
        target,
        format,
        sidecar_path(target).name,
    )
    return target


def description(
    checkpoints: list[Checkpoint], names: list[str], runtime: str, unknown: UnknownRule | None = None
) -> dict[str, Any]:
    first = largest_input(checkpoints)
    size = first.preprocessing["image_size"]
    probabilities = "log of the members' mean calibrated probability (its softmax is that mean)"
    logits = f"logits: float32 [N, {len(first.classes)}], {probabilities}"
    scores = description_fields(unknown, logits) or {"output": f"float32 [N, {len(first.classes)}]: {probabilities}"}
    return {
        "format": SIDECAR_FORMAT,
        "runtime": runtime,
        "classes": first.classes,
        "preprocessing": first.preprocessing,
        "input": f"image: float32 [N, 3, {size}, {size}], resized, centre-cropped and normalised with mean/std as in preprocessing",
        **scores,
        "backbone": first.recipe["model"]["backbone"],
        "ensemble": [
            {
                "checkpoint": f"{name}/best.pt",
                "backbone": c.recipe["model"]["backbone"],
                "temperature": c.temperature,
                "val_acc": c.val_acc,
            }
            for name, c in zip(names, checkpoints)
        ],
    }


def write_ensemble_folder(folder: Path, members: Sequence[Path], unknown: UnknownRule | None = None) -> Path:
    """Make `folder` an ensemble run folder: its ENSEMBLE_FILE lists the member run folders (relative to it)
    and, where fitted, the threshold on the ensemble's unknown-image score."""
    listed: dict[str, Any] = {"members": [str(Path(member).relative_to(folder)) for member in members]}
    if unknown is not None:
        listed["unknown"] = unknown.fields()
    target = folder / ENSEMBLE_FILE
    atomic_write(target, json.dumps(listed, indent=1).encode())
    return target


def ensemble_rule(folder: str | Path) -> UnknownRule | None:
    """The threshold on an ensemble run folder's unknown-image score; None where none was fitted."""
    listed = user_path(folder) / ENSEMBLE_FILE
    try:
        values = json.loads(listed.read_text()).get("unknown")
        return None if values is None else RuleFields.model_validate(values).rule()
    except (ValueError, AttributeError) as err:  # pydantic's ValidationError is a ValueError
        raise HeadstartError(
            f"{listed}: its unknown-image threshold is damaged ({err!r:.120}); train the run again"
        ) from None


def ensemble_members(folder: str | Path) -> list[Path] | None:
    """The member run folders of an ensemble run folder; None where `folder` is not one."""
    path = user_path(folder)
    listed = path / ENSEMBLE_FILE if path.is_dir() else None
    if listed is None or not listed.is_file():
        return None
    try:
        members = json.loads(listed.read_text())["members"]
    except (ValueError, KeyError, TypeError) as err:
        raise HeadstartError(f"{listed} is not an ensemble description ({err}); train the run again") from None
    return [path / member for member in members]
