"""Typed run state: what best.pt and last.pt hold, written and read here and nowhere else.

A checkpoint is saved as a plain dict of tensors, strings and numbers, so `torch.load(path,
weights_only=True)` reads it without running code, and anything (timm, a notebook) can open it.

    format      "headstart-checkpoint-1" (every checkpoint headstart ever wrote)
    version     the layout of the fields below; absent in the files written before it was typed (1)
    model       the scored weights (with a weight EMA: the average); raw_model: the trained ones
    recipe, classes, preprocessing, stage, epoch, val_loss, val_acc
    temperature, calibration   fitted on the val split after training (best.pt)
    task        "single-label" or "multi-label"; thresholds: a multi-label model's per-tag thresholds
    unknown     the unknown-image detector fitted after them: tensors, threshold (best.pt; absent before it)
    resume      (last.pt) where to continue: stage index, epoch, optimizer state by parameter name,
                schedule, RNG states, early-stopping state, elapsed seconds, the summary's notes

Older files load as version 3: version 2 only named what version 1 held, with the optional
fields made explicit (a stage_finished of None means "written before early stopping"); version 3
added the task (files without it are single-label) and per-tag thresholds. The version is bumped
so that an older headstart refuses a multi-label model rather than reading it as single-label.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.runs import resolve_checkpoint

CHECKPOINT_FORMAT = "headstart-checkpoint-1"
STATE_VERSION = 3


@dataclass
class ResumeState:
    """Where an interrupted run continues: the stage and epoch after which last.pt was written."""

    stage_index: int
    epoch: int
    epochs_done: int  # history rows up to this checkpoint, over all stages
    optimizer: dict[str, Any]  # by parameter name (training.resume.optimizer_state)
    schedule: dict[str, Any]
    rng: dict[str, Any]
    elapsed: float = 0.0
    stage_finished: bool | None = None  # None: written before early stopping, when a stage ended with its epochs
    early_stop: dict[str, Any] = field(default_factory=dict)  # training.hooks.EarlyStopping's state
    stage_notes: list[str] = field(default_factory=list)


@dataclass
class Checkpoint:
    """One saved model with what predicting, exporting and resuming it needs."""

    model: dict[str, torch.Tensor]
    recipe: dict[str, Any]
    classes: list[str]
    preprocessing: dict[str, Any]
    stage: str
    epoch: int
    val_loss: float
    val_acc: float
    raw_model: dict[str, torch.Tensor] | None = None
    temperature: float | None = None
    calibration: dict[str, Any] | None = None
    unknown: dict[str, Any] | None = None  # the unknown-image detector (headstart.tasks.unknown), best.pt only
    resume: ResumeState | None = None
    version: int = STATE_VERSION
    task: str = "single-label"  # what a label is (tasks.registry): "single-label" or "multi-label"
    thresholds: list[float] | None = None  # multi-label: per tag, chosen on val for F1 after training

    def to_dict(self) -> dict[str, Any]:
        """The plain dict saved to disk (fields left at None are not written)."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.resume is not None:
            payload["resume"] = asdict(self.resume)
        return {**payload, "format": CHECKPOINT_FORMAT}

    @classmethod
    def from_dict(cls, payload: Any, where: Path | str = "checkpoint") -> Checkpoint:
        """A checkpoint from what torch.load gave; a one-line error for anything that is not one."""
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise HeadstartError(f"{where} is not a headstart checkpoint")
        version = payload.get("version", 1)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise HeadstartError(f"{where} was written by a newer headstart (state version {version}); upgrade")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        try:
            if isinstance(values.get("resume"), dict):
                resume_fields = {f.name for f in fields(ResumeState)}
                values["resume"] = ResumeState(**{k: v for k, v in values["resume"].items() if k in resume_fields})
            return cls(**{**values, "version": STATE_VERSION})
        except TypeError as err:  # a required field missing
            raise HeadstartError(f"{where} is not a complete headstart checkpoint ({err})") from None

    def save(self, path: Path) -> None:
        """Written to a temporary name and renamed into place: an interrupted save leaves the old file whole."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        atomic_write(path, buffer.getvalue())


def load_checkpoint(run_or_checkpoint: str | Path) -> Checkpoint:
    """Read a headstart checkpoint safely (weights_only=True: a pickle that would run code is refused)."""
    path = resolve_checkpoint(run_or_checkpoint)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable or unsafe files are the same user error
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise HeadstartError(f"cannot load checkpoint {path}: {reason}") from None
    return Checkpoint.from_dict(payload, path)
