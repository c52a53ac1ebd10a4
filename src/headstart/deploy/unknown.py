"""Unknown images at prediction time: the model with its score output, the flag on each prediction, the rule in files.

A run's best.pt holds the fitted detector (headstart.tasks.unknown); predicting runs the model as
`WithScore` (logits and the score from one pass) and flags an image whose score is above the
threshold. Exported graphs (ONNX, .pt2, TorchScript, LiteRT, Core ML; the last two in float32) compute
the same score as a second output and record the threshold in their description; a Hub folder carries the detector's tensors in
`unknown.safetensors` and the threshold in config.json's headstart block.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.model.build import Classifier, WithScore
from headstart.tasks.unknown import METHOD, UnknownDetector, UnknownRule, UnknownScore, UnknownScore32

UNKNOWN_WEIGHTS = "unknown.safetensors"  # in a Hub folder, beside model.safetensors


class Prediction(list):
    """One image's top (label, probability) pairs, plus whether the image looks like none of the classes.

    A list, so code written for the plain top-k lists keeps working; `unknown` and `unknown_score`
    are None when the model has no detector or it was turned off.
    """

    def __init__(self, top, unknown: bool | None = None, unknown_score: float | None = None):
        super().__init__(top)
        self.unknown, self.unknown_score = unknown, unknown_score


class RuleFields(BaseModel):
    """The threshold as an export description or Hub config records it: checked, since such a file is input."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    method: str = Field(METHOD, max_length=100)
    threshold: float
    val_rate: float | None = Field(None, ge=0, le=1)

    def rule(self) -> UnknownRule:
        return UnknownRule(self.threshold, self.method, self.val_rate)


def detector_of(checkpoint: Checkpoint) -> UnknownDetector | None:
    """The checkpoint's detector; a one-line error for one whose tensors do not fit its own model."""
    if checkpoint.unknown is None:
        return None
    try:
        return UnknownDetector.from_dict(checkpoint.unknown)
    except (KeyError, TypeError, ValueError) as err:
        raise HeadstartError(f"the checkpoint's unknown-image detector is damaged ({err!r:.120})") from None


def scored_model(model: nn.Module, detector: UnknownDetector | None) -> nn.Module:
    """`model` with the detector's score as a second output, or `model` itself without a detector."""
    return model if detector is None else WithScore(model, detector.module()).eval()


def in_float32(model: nn.Module) -> nn.Module:
    """`model` with its unknown-image scores computed in float32 (UnknownScore32), for runtimes without float64.

    Every WithScore inside is swapped, an ensemble's members too; a changed module is a shallow copy
    holding the swapped children, so `model` itself is left as it was.
    """
    if isinstance(model, WithScore) and isinstance(model.score, UnknownScore):
        return WithScore(model.classifier, UnknownScore32(model.score)).eval()
    children = dict(model.named_children())
    swapped = {name: in_float32(child) for name, child in children.items()}
    if all(swapped[name] is child for name, child in children.items()):
        return model
    copied = copy.copy(model)
    copied._modules = {**model._modules, **swapped}  # the copy's own dict: the original keeps its children
    return copied


def split_outputs(outputs: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, score or None) from what a model returned: logits alone, or (logits, score)."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return outputs, None


def mark(top: list[list[tuple[str, float]]], scores: torch.Tensor | None, rule: UnknownRule | None) -> list[Prediction]:
    """Each image's top labels as a Prediction, flagged where its score is above the rule's threshold."""
    if scores is None or rule is None:
        return [Prediction(labels) for labels in top]
    flags = rule.flags(scores).tolist()
    return [Prediction(labels, bool(f), float(s)) for labels, f, s in zip(top, flags, scores.tolist())]


def entry_fields(prediction: list) -> dict[str, Any]:
    """`unknown` and `unknown_score` for a prediction's JSON entry, when the model flags unknown images."""
    unknown = getattr(prediction, "unknown", None)
    if unknown is None:
        return {}
    return {"unknown": unknown, "unknown_score": round(float(prediction.unknown_score), 6)}  # type: ignore[attr-defined]


def unknown_summary(scores: torch.Tensor | None, rule: UnknownRule | None) -> dict[str, Any] | None:
    """How many scored images the detector flags, with its threshold: evaluate's unknown figures."""
    if scores is None or rule is None:
        return None
    flagged = int(rule.flags(scores).sum())
    rate = flagged / max(len(scores), 1)
    return {
        "flagged": flagged,
        "rate": rate,
        "threshold": rule.threshold,
        "method": rule.method,
        "val_rate": rule.val_rate,
    }


def unknown_line(found: dict[str, Any], count: int) -> str:
    val = f", {found['val_rate']:.1%} of the run's val images" if found.get("val_rate") is not None else ""
    return (
        f"unknown: {found['flagged']} of {count} images flagged ({found['rate']:.1%}) "
        f"above the threshold {found['threshold']:.4g} ({found['method']}{val})"
    )


def description_fields(rule: UnknownRule | None, logits: str = "logits: float32 [N, classes]") -> dict[str, Any]:
    """What an export description says about the score output: the threshold, how it was fitted, both outputs.

    `logits` describes the first output (an ensemble's is the log of its members' mean probability).
    """
    if rule is None:
        return {}
    return {
        "unknown": rule.fields(),
        "output": f"({logits}, unknown_score: float32 [N]; above unknown.threshold: unknown)",
    }


def rule_from_description(info: dict[str, Any]) -> UnknownRule | None:
    values = info.get("unknown")
    return None if values is None else RuleFields.model_validate(values).rule()


def write_hub_detector(folder: Path, detector: UnknownDetector) -> None:
    from safetensors.torch import save_file

    tensors = {"whitening": detector.whitening.contiguous(), "centres": detector.centres.contiguous()}
    save_file(tensors, str(folder / UNKNOWN_WEIGHTS), metadata={"format": "pt"})


def hub_scored(folder: Path, model: nn.Module, block: Any) -> nn.Module:
    """A Hub folder's model with its detector's score as a second output, when its config has a threshold."""
    fields: RuleFields | None = getattr(block, "unknown", None)
    if fields is None:
        return model
    output = model.head[-1] if isinstance(model, Classifier) else model.get_classifier()  # type: ignore[operator]
    if not isinstance(output, nn.Linear):
        raise HeadstartError(f"{folder}: an unknown-image threshold for a model whose classifier is not a Linear layer")
    return WithScore(model, read_hub_detector(folder, output.in_features)).eval()


def read_hub_detector(folder: Path, features: int) -> nn.Module:
    """The score module of a Hub folder's unknown.safetensors; a one-line error when its tensors do not fit the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / UNKNOWN_WEIGHTS
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise HeadstartError(f"cannot read {path}: {str(err).splitlines()[0][:160]}") from None
    whitening, centres = tensors.get("whitening"), tensors.get("centres")
    if (
        whitening is None
        or centres is None
        or tuple(whitening.shape) != (features, features)
        or centres.ndim != 2
        or centres.shape[1] != features
    ):
        raise HeadstartError(
            f"{path} does not fit the model: whitening [{features}, {features}] and centres [classes, {features}] expected"
        )
    return UnknownScore(whitening, centres)
