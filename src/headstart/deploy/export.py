"""Models out of Python: ONNX, torch.export, TorchScript, LiteRT or Core ML files, each with its preprocessing beside it.

    headstart export RUN --format onnx   ->  RUN/export/model.onnx + model.onnx.json
    headstart export RUN --format onnx --quantize int8  ->  also model.int8.onnx + model.int8.onnx.json
    headstart export RUN --format export  ->  RUN/export/model.pt2 + model.pt2.json (torch.export)
    headstart export RUN --format torchscript  ->  model.torchscript, while torch traces it without warnings
    headstart export RUN --format tflite  ->  RUN/export/model.tflite + model.tflite.json (LiteRT, one image a call)
    headstart export RUN --format coreml  ->  RUN/export/model.mlpackage + model.mlpackage.json (Core ML)
    headstart export RUN --format hub    ->  RUN/export/hub/ (see hub.py)

The model takes float32 images [N, 3, S, S], already resized, cropped and normalised as the JSON
says (the same eval transform training used), and returns logits [N, classes]. `headstart predict`
and `headstart.load` accept the exported file and apply that preprocessing themselves.

Example:
    >>> path = headstart.export("runs/hymenoptera-tf_efficientnet_lite0", format="onnx")
    >>> headstart.load(path).predict(["ant.jpg"])
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from headstart.config.describe import describe_validation_error
from headstart.config.recipe import Preprocessing
from headstart.core.checkpoint import Checkpoint, load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.paths import user_path
from headstart.core.runs import resolve_checkpoint
from headstart.deploy.ensemble import ensemble_members, ensemble_rule, export_ensemble
from headstart.deploy.formats import FORMATS, Format, runtimes
from headstart.deploy.unknown import RuleFields, description_fields, detector_of, scored_model, split_outputs
from headstart.deploy.writing import SIDECAR_FORMAT, sidecar_path, write_module
from headstart.model.build import fold_temperature, model_from_checkpoint

log = logging.getLogger(__name__)


def export(
    run_or_checkpoint: str | Path, format: str = "onnx", out: str | Path | None = None, quantize: str | None = None
) -> Path:
    """Write the run's best model (or the given checkpoint) in one of FORMATS (headstart.deploy.formats).

    quantize='int8' (ONNX only) also writes model.int8.onnx, statically quantized with onnxruntime and
    calibrated on the run's validation images; its path is returned.
    """
    if format not in FORMATS:
        raise HeadstartError(f"unknown export format '{format}'; valid: {', '.join(FORMATS)}")
    chosen = FORMATS[format]
    if quantize is not None and quantize not in chosen.quantize:
        valid = " or ".join(f"--quantize {q} with --format {f.name}" for f in FORMATS.values() for q in f.quantize)
        raise HeadstartError(f"--quantize {quantize}: valid is {valid}")
    members = ensemble_members(run_or_checkpoint)
    if members is not None:  # train --budget's ensemble run: its members' models as one file
        if quantize is not None:
            raise HeadstartError(f"--quantize {quantize}: an ensemble run is exported unquantized; drop --quantize")
        folder = user_path(run_or_checkpoint) / "export"
        target = user_path(out) if out else None
        return export_ensemble(members, folder, format, target=target, unknown=ensemble_rule(run_or_checkpoint))
    if chosen.export_run is not None:
        return chosen.export_run(run_or_checkpoint, out)
    checkpoint_path = resolve_checkpoint(run_or_checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    target = user_path(out) if out else checkpoint_path.parent / "export" / chosen.file_name
    sidecar = description(checkpoint, checkpoint_path, format)
    write_model_file(chosen, checkpoint, target, sidecar)
    atomic_write(sidecar_path(target), json.dumps(sidecar, indent=1).encode())
    log.info("exported %s (%s) with its preprocessing in %s", target, format, sidecar_path(target).name)
    if quantize is not None:
        return chosen.quantize[quantize](target, checkpoint, sidecar)
    return target


def write_model_file(chosen: Format, checkpoint: Checkpoint, target: Path, sidecar: dict[str, Any]) -> None:
    """The checkpoint's model as `chosen` writes it, published by one rename (nothing half-written at `target`).

    `sidecar`, the description written beside it, goes into formats whose files hold metadata.
    """
    classifier = model_from_checkpoint(checkpoint)
    if checkpoint.temperature is not None:  # every runtime then gives headstart's calibrated probabilities
        fold_temperature(classifier, checkpoint.temperature)
    # The detector scores the penultimate features, which the folded temperature leaves as they are.
    model = scored_model(classifier, detector_of(checkpoint))
    write_module(chosen, model, checkpoint.preprocessing["image_size"], target, sidecar)


def description(checkpoint: Checkpoint, checkpoint_path: Path, runtime: str) -> dict[str, Any]:
    """The description written beside a model file: its runtime, classes and the preprocessing its input needs."""
    size = checkpoint.preprocessing["image_size"]
    sidecar = {
        "format": SIDECAR_FORMAT,
        "runtime": runtime,
        "classes": checkpoint.classes,
        "preprocessing": checkpoint.preprocessing,
        "input": f"image: float32 [N, 3, {size}, {size}], resized, centre-cropped and normalised with mean/std as in preprocessing",
        "output": f"logits: float32 [N, {len(checkpoint.classes)}]",
        "backbone": checkpoint.recipe["model"]["backbone"],
        "checkpoint": f"{checkpoint_path.parent.name}/{checkpoint_path.name}",  # no local path in a shared file
        "val_acc": checkpoint.val_acc,
    }
    if checkpoint.temperature is not None:  # already folded into the output layer: recorded for the reader
        sidecar.update(temperature=checkpoint.temperature, temperature_applied=True)
    if checkpoint.task == "multi-label":  # a sigmoid per output, each tag given at or above its threshold
        sidecar.update(task=checkpoint.task, activation="sigmoid", thresholds=checkpoint.thresholds)
    detector = detector_of(checkpoint)
    sidecar.update(description_fields(detector.rule if detector is not None else None))
    batch = FORMATS[runtime].batch
    if batch is not None:  # a file that takes a fixed batch: N is that number
        sidecar.update({key: sidecar[key].replace("[N", f"[{batch}") for key in ("input", "output")})
    return sidecar


class _Description(BaseModel):
    """The fields of model.onnx.json that prediction relies on (the others are for people and are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["headstart-export-1"]
    runtime: Literal[runtimes()]  # type: ignore[valid-type]  # the formats with a loader
    classes: list[str] = Field(min_length=2, max_length=1_000_000)
    preprocessing: Preprocessing
    temperature: float | None = Field(None, ge=0.01, le=100)
    temperature_applied: bool = False  # folded into the weights (files from before: applied by the loader)
    task: Literal["single-label", "multi-label"] = "single-label"
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] | None = None
    unknown: RuleFields | None = None  # the graph's second output is the unknown-image score

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class names repeat")
        return classes

    @model_validator(mode="after")
    def _thresholds_per_tag(self) -> _Description:
        if self.thresholds is not None and len(self.thresholds) != len(self.classes):
            raise ValueError(f"thresholds lists {len(self.thresholds)} values for {len(self.classes)} classes")
        return self


def read_sidecar(model_file: Path) -> dict[str, Any]:
    """The export description beside `model_file`, every field checked; a one-line error naming the bad one."""
    sidecar = sidecar_path(model_file)
    if not sidecar.is_file():
        raise HeadstartError(
            f"{model_file} has no {sidecar.name} beside it: export it with headstart export to record its preprocessing"
        )
    try:
        info = json.loads(sidecar.read_bytes())
    except (ValueError, OSError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
        raise HeadstartError(f"{sidecar} is not valid JSON ({str(err).splitlines()[0][:120]})") from None
    try:
        return _Description.model_validate(info).model_dump()
    except ValidationError as err:
        raise HeadstartError(
            f"{sidecar} is not a valid headstart export description: {describe_validation_error(err)}"
        ) from None


def check_outputs(forward, info: dict[str, Any], model_file: Path) -> None:
    """One forward pass on a blank image: one logit per class, and an unknown score where the description has a threshold."""
    size = info["preprocessing"]["image_size"]
    try:
        logits, score = split_outputs(forward(torch.zeros(1, 3, size, size)))
        shape = tuple(logits.shape)
    except Exception as err:  # noqa: BLE001 - whatever the runtime raises, the file and its description disagree
        raise HeadstartError(
            f"{model_file} does not run on [1, 3, {size}, {size}] images as {sidecar_path(model_file).name} says "
            f"({type(err).__name__})"
        ) from None
    if shape != (1, len(info["classes"])):
        raise HeadstartError(
            f"{model_file} returns {shape[-1] if shape else 0} outputs but {sidecar_path(model_file).name} lists "
            f"{len(info['classes'])} classes: the description does not belong to this model"
        )
    if (info.get("unknown") is not None) != (score is not None and tuple(score.shape) == (1,)):
        raise HeadstartError(
            f"{model_file} and {sidecar_path(model_file).name} disagree on the unknown-image score output: "
            "the description does not belong to this model"
        )


def load_exported(model_file: Path):
    """A callable images[N,3,S,S] -> logits for an exported file, run by the runtime its description names."""
    info = read_sidecar(model_file)
    load = FORMATS[info["runtime"]].load
    assert load is not None  # read_sidecar accepts only runtimes(): the formats with a loader
    forward = load(model_file)
    with torch.no_grad():
        check_outputs(forward, info, model_file)
    return forward, info
