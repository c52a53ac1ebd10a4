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
from typing import Any

import torch

from headstart.errors import HeadstartError
from headstart.model import build_model
from headstart.recipe import Recipe
from headstart.runs import atomic_write, load_checkpoint, resolve_checkpoint

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript", "export": "model.pt2", "hub": "hub"}
QUANTIZE = ("int8",)
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
        from headstart.hub import export_hub

        return export_hub(run_or_checkpoint, out)
    checkpoint_path = resolve_checkpoint(run_or_checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    size = checkpoint["preprocessing"]["image_size"]
    example = torch.zeros(2, 3, size, size)
    target = Path(out).expanduser() if out else checkpoint_path.parent / "export" / FORMATS[format]
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.partial{target.suffix}")  # torch.export wants the .pt2 suffix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters warn about internals the user cannot act on
        if format == "onnx":
            _onnx(model, example, temporary)
        elif format == "export":
            batch = torch.export.Dim("batch", min=1)
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}}), str(temporary))
        else:
            _torchscript(model, example, temporary)
    temporary.replace(target)
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
    if quantize is not None:
        from headstart.quantize import quantize_onnx

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


def read_sidecar(model_file: Path) -> dict[str, Any]:
    sidecar = sidecar_path(model_file)
    if not sidecar.is_file():
        raise HeadstartError(
            f"{model_file} has no {sidecar.name} beside it: export it with headstart export to record its preprocessing"
        )
    info = json.loads(sidecar.read_text())
    if info.get("format") != SIDECAR_FORMAT:
        raise HeadstartError(f"{sidecar} is not a headstart export description")
    return info


def load_exported(model_file: Path):
    """A callable images[N,3,S,S] -> logits for an exported file, run by onnxruntime or TorchScript."""
    info = read_sidecar(model_file)
    if info["runtime"] == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise HeadstartError("running an ONNX model needs onnxruntime; pip install 'headstart[export]'") from None
        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(["logits"], {"image": batch.numpy()})[0])

        return forward, info
    if info["runtime"] == "export":
        return torch.export.load(str(model_file)).module(), info
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export (a FutureWarning or DeprecationWarning by version), still supported.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        module = torch.jit.load(str(model_file), map_location="cpu").eval()
    return module, info
