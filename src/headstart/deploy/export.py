"""Models out of Python: ONNX, torch.export or TorchScript files, each with its preprocessing recorded beside it.

    headstart export RUN --format onnx   ->  RUN/export/model.onnx + model.onnx.json
    headstart export RUN --format onnx --quantize int8  ->  also model.int8.onnx + model.int8.onnx.json
    headstart export RUN --format export  ->  RUN/export/model.pt2 + model.pt2.json (torch.export)
    headstart export RUN --format torchscript  ->  model.torchscript, while torch traces it without warnings
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
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from headstart.config.recipe import Preprocessing, describe_validation_error
from headstart.core.errors import HeadstartError
from headstart.core.fileio import writing
from headstart.core.paths import user_path
from headstart.core.runs import atomic_write, load_checkpoint, resolve_checkpoint
from headstart.deploy.pt2_safety import check_pt2_archive
from headstart.model.build import model_from_checkpoint

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript", "export": "model.pt2", "hub": "hub"}
QUANTIZE = ("int8",)
SIDECAR_FORMAT = "headstart-export-1"


def sidecar_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def export(
    run_or_checkpoint: str | Path, format: str = "onnx", out: str | Path | None = None, quantize: str | None = None
) -> Path:
    """Write the run's best model (or the given checkpoint) as ONNX, TorchScript, torch.export (.pt2) or a Hub folder.

    quantize='int8' (ONNX only) also writes model.int8.onnx, statically quantized with onnxruntime and
    calibrated on the run's validation images; its path is returned.
    """
    if format not in FORMATS:
        raise HeadstartError(f"unknown export format '{format}'; valid: {', '.join(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZE or format != "onnx"):
        raise HeadstartError(f"--quantize {quantize}: valid is --quantize int8 with --format onnx")
    if format == "hub":
        from headstart.deploy.hub import export_hub

        return export_hub(run_or_checkpoint, out)
    checkpoint_path = resolve_checkpoint(run_or_checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    size = checkpoint["preprocessing"]["image_size"]
    example = torch.zeros(2, 3, size, size)
    target = user_path(out) if out else checkpoint_path.parent / "export" / FORMATS[format]
    temporary = target.with_name(f".{target.stem}.partial{target.suffix}")  # torch.export wants the .pt2 suffix
    try:
        with writing(target), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters warn about internals the user cannot act on
            target.parent.mkdir(parents=True, exist_ok=True)
            if format == "onnx":
                _onnx(model, example, temporary)
            elif format == "export":
                batch = torch.export.Dim("batch", min=1)
                program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
                torch.export.save(program, str(temporary))
            else:
                _torchscript(model, example, temporary)
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
    if checkpoint.get("temperature") is not None:  # predictions divide the logits by it (headstart.tasks.calibration)
        sidecar["temperature"] = checkpoint["temperature"]
    atomic_write(sidecar_path(target), json.dumps(sidecar, indent=1).encode())
    log.info("exported %s (%s) with its preprocessing in %s", target, format, sidecar_path(target).name)
    if quantize is not None:
        from headstart.deploy.quantize import quantize_onnx

        return quantize_onnx(target, checkpoint, sidecar)
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


def _torchscript(model: torch.nn.Module, example: torch.Tensor, target: Path) -> None:
    """TorchScript is kept only while this torch traces the model without a warning (torch 2.14 deprecates torch.jit)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example)
    if caught:
        raise HeadstartError(
            f"TorchScript export is retired: torch {torch.__version__} warns while tracing ({str(caught[0].message)[:90]}); "
            "use --format export (torch.export, .pt2) or --format onnx"
        )
    torch.jit.save(traced, str(target))


class _Description(BaseModel):
    """The fields of model.onnx.json that prediction relies on (the others are for people and are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["headstart-export-1"]
    runtime: Literal["onnx", "export", "torchscript"]
    classes: list[str] = Field(min_length=2, max_length=1_000_000)
    preprocessing: Preprocessing
    temperature: float | None = Field(None, ge=0.01, le=100)

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
    except (ValueError, OSError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
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


def load_program(model_file: Path) -> torch.nn.Module:
    """A .pt2 file's module; a damaged file is the one-line error (torch would log a traceback while failing)."""
    import zipfile

    if not zipfile.is_zipfile(model_file):
        raise HeadstartError(f"cannot load {model_file} with torch.export: not a .pt2 archive (damaged or truncated?)")
    check_pt2_archive(model_file)
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return torch.export.load(str(model_file)).module()
    except Exception as err:  # noqa: BLE001 - a file torch.export cannot read, whatever the reason
        raise HeadstartError(f"cannot load {model_file} with torch.export: {str(err).splitlines()[0][:160]}") from None
    finally:
        quiet.setLevel(level)


def load_exported(model_file: Path):
    """A callable images[N,3,S,S] -> logits for an exported file, run by onnxruntime, torch.export or TorchScript."""
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
    if info["runtime"] == "export":
        program = load_program(model_file)
        with torch.no_grad():
            check_outputs(program, info, model_file)
        return program, info
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
