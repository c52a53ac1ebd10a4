"""Models out of Python: ONNX or TorchScript files, each with its preprocessing recorded beside it.

    headstart export RUN --format onnx   ->  RUN/export/model.onnx + model.onnx.json
    headstart export RUN --format torchscript  ->  RUN/export/model.torchscript + model.torchscript.json

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
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from headstart.errors import HeadstartError
from headstart.fileio import writing
from headstart.model import build_model
from headstart.paths import user_path
from headstart.recipe import MAX_IMAGE_SIZE, Recipe, describe_validation_error
from headstart.runs import atomic_write, load_checkpoint, resolve_checkpoint

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript"}
SIDECAR_FORMAT = "headstart-export-1"


def sidecar_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def model_from_checkpoint(checkpoint: dict[str, Any]) -> torch.nn.Module:
    recipe = Recipe.from_dict(checkpoint["recipe"], source="checkpoint recipe")
    model = build_model(
        recipe.model.model_copy(update={"weights": "none"}),
        len(checkpoint["classes"]),
        checkpoint["preprocessing"]["image_size"],
    )
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def export(run_or_checkpoint: str | Path, format: str = "onnx", out: str | Path | None = None) -> Path:
    """Write the run's best model (or the given checkpoint) as ONNX or TorchScript; returns the model file's path."""
    if format not in FORMATS:
        raise HeadstartError(f"unknown export format '{format}'; valid: {', '.join(FORMATS)}")
    checkpoint_path = resolve_checkpoint(run_or_checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    size = checkpoint["preprocessing"]["image_size"]
    example = torch.zeros(2, 3, size, size)
    target = user_path(out) if out else checkpoint_path.parent / "export" / FORMATS[format]
    temporary = target.with_name(f".{target.name}.partial")
    try:
        with writing(target), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters warn about internals the user cannot act on
            target.parent.mkdir(parents=True, exist_ok=True)
            if format == "onnx":
                _onnx(model, example, temporary)
            else:
                torch.jit.save(torch.jit.trace(model, example), str(temporary))
            temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)  # what a full disk left half-written
    sidecar = {
        "format": SIDECAR_FORMAT,
        "runtime": format,
        "classes": checkpoint["classes"],
        "preprocessing": checkpoint["preprocessing"],
        "input": f"image: float32 [N, 3, {size}, {size}], resized, centre-cropped and normalised with mean/std as in preprocessing",
        "output": f"logits: float32 [N, {len(checkpoint['classes'])}]",
        "backbone": checkpoint["recipe"]["model"]["backbone"],
        "checkpoint": str(checkpoint_path),
        "val_acc": checkpoint["val_acc"],
    }
    atomic_write(sidecar_path(target), json.dumps(sidecar, indent=1).encode())
    log.info("exported %s (%s) with its preprocessing in %s", target, format, sidecar_path(target).name)
    return target


def _onnx(model: torch.nn.Module, example: torch.Tensor, target: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(target),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    except ImportError as err:
        raise HeadstartError(
            f"ONNX export needs the onnx and onnxscript packages ({err}); pip install 'headstart[export]'"
        ) from None


class _Preprocessing(BaseModel):
    """The eval transform an exported model expects; bounded, so a doctored file cannot ask for 100000 px images."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    image_size: int = Field(ge=1, le=MAX_IMAGE_SIZE)
    crop_pct: float = Field(gt=0, le=1)
    mean: tuple[float, float, float]
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    interpolation: Literal["bilinear", "bicubic", "nearest"]


class _Description(BaseModel):
    """The fields of model.onnx.json that prediction relies on (the others are for people and are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["headstart-export-1"]
    runtime: Literal["onnx", "torchscript"]
    classes: list[str] = Field(min_length=2, max_length=1_000_000)
    preprocessing: _Preprocessing

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class names repeat")
        return classes


def read_sidecar(model_file: Path) -> dict[str, Any]:
    """The export description beside `model_file`, every field checked; a one-line error naming the bad one."""
    sidecar = sidecar_path(model_file)
    if not sidecar.is_file():
        raise HeadstartError(
            f"{model_file} has no {sidecar.name} beside it: export it with headstart export to record its preprocessing"
        )
    try:
        info = json.loads(sidecar.read_bytes())
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HeadstartError(f"{sidecar} is not valid JSON ({str(err).splitlines()[0][:120]})") from None
    try:
        return _Description.model_validate(info).model_dump()
    except ValidationError as err:
        raise HeadstartError(
            f"{sidecar} is not a valid headstart export description: {describe_validation_error(err)}"
        ) from None


def check_outputs(forward, info: dict[str, Any], model_file: Path) -> None:
    """One forward pass on a blank image: the model must take the described input and return one logit per class."""
    size = info["preprocessing"]["image_size"]
    try:
        shape = tuple(forward(torch.zeros(1, 3, size, size)).shape)
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


def load_exported(model_file: Path):
    """A callable images[N,3,S,S] -> logits for an exported file, run by onnxruntime or TorchScript."""
    info = read_sidecar(model_file)
    if info["runtime"] == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise HeadstartError("running an ONNX model needs onnxruntime; pip install 'headstart[export]'") from None
        try:
            session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types: a file it cannot read
            raise HeadstartError(
                f"cannot load {model_file} with onnxruntime: {str(err).splitlines()[0][:160]}"
            ) from None

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(["logits"], {"image": batch.numpy()})[0])

        check_outputs(forward, info, model_file)
        return forward, info
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export (a FutureWarning or DeprecationWarning by version), still supported.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        try:
            module = torch.jit.load(str(model_file), map_location="cpu").eval()
        except Exception as err:  # noqa: BLE001 - a file TorchScript cannot read, whatever the reason
            raise HeadstartError(f"cannot load {model_file} as TorchScript: {str(err).splitlines()[0][:160]}") from None
    with torch.no_grad():
        check_outputs(module, info, model_file)
    return module, info
