"""ONNX: written by torch.onnx's dynamo exporter, run by onnxruntime; `--quantize int8` adds model.int8.onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.model.build import returns_score


def write(model: torch.nn.Module, example: torch.Tensor, target: Path, description: dict[str, Any]) -> None:
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(
            model,
            (example,),
            str(target),
            input_names=["image"],
            # A model with an unknown-image detector returns its score as a second output.
            output_names=["logits", "unknown_score"] if returns_score(model) else ["logits"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    except ImportError as err:
        raise HeadstartError(
            f"ONNX export needs the onnx and onnxscript packages ({err}); {install_hint('export')}"
        ) from None


def load(model_file: Path):
    """images [N,3,S,S] -> logits (and the unknown score, where the graph has that output), run by onnxruntime on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise HeadstartError(f"running an ONNX model needs onnxruntime; {install_hint('export')}") from None
    try:
        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types: a file it cannot read
        raise HeadstartError(f"cannot load {model_file} with onnxruntime: {str(err).splitlines()[0][:160]}") from None

    names = [output.name for output in session.get_outputs()]
    wanted = ["logits", "unknown_score"] if "unknown_score" in names else ["logits"]

    def forward(batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = [torch.from_numpy(o) for o in session.run(wanted, {"image": batch.numpy()})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return forward


def quantize_int8(fp32: Path, checkpoint: Checkpoint, sidecar: dict[str, Any]) -> Path:
    # quantize.py loads numpy, PIL and the data listing; only --quantize needs them.
    from headstart.deploy.quantize import quantize_onnx

    return quantize_onnx(fp32, checkpoint, sidecar)
