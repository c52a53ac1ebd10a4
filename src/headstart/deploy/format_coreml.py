"""Core ML: a model.mlpackage (an ML program, float32) written by coremltools from torch.export's program.

The package takes one image at a time, `image` [1, 3, S, S] float32 as the description's
preprocessing makes it, and returns `logits` (and `unknown_score`, computed in float32). The
description export writes beside it is also in the model's own metadata (`user_defined_metadata`:
"headstart" holds it as JSON; "classes" and "preprocessing" repeat those two parts), so an app that
ships only the package still has its classes and preprocessing. Core ML runs on Apple's systems
only: headstart writes the package on any machine but cannot run it on Linux.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.deploy.unknown import in_float32
from headstart.model.build import returns_score

RUNS_ON = "Core ML runs on macOS, iOS, iPadOS, watchOS and visionOS"
DEPLOYMENT_TARGET = "iOS15"  # the first with ML programs (macOS 12)


@contextmanager
def _coremltools(purpose: str) -> Iterator[Any]:
    """coremltools, imported and used without its warnings (on Linux: that its Apple-only runtime is missing)."""
    quiet = logging.getLogger("coremltools")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import coremltools
            except ImportError as err:
                raise HeadstartError(f"{purpose} needs coremltools ({err}); {install_hint('coreml')}") from None
            yield coremltools
    finally:
        quiet.setLevel(level)


def write(model: torch.nn.Module, example: torch.Tensor, target: Path, description: dict[str, Any]) -> None:
    with _coremltools("Core ML export") as ct:
        converted = _convert(ct, model, example)
        _describe(converted, description)
        converted.save(str(target))


def _convert(ct: Any, model: torch.nn.Module, example: torch.Tensor):
    program = torch.export.export(in_float32(model).eval(), (example,)).run_decompositions({})
    outputs = ["logits", "unknown_score"] if returns_score(model) else ["logits"]
    return ct.convert(
        program,
        inputs=[ct.TensorType(name="image", shape=tuple(example.shape))],
        outputs=[ct.TensorType(name=name) for name in outputs],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,  # coremltools' default is float16: half the size, not the run's numbers
        minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
    )


def _describe(converted, description: dict[str, Any]) -> None:
    """The description in the model's metadata, and the inputs and outputs described in words."""
    size = description["preprocessing"]["image_size"]
    converted.short_description = f"headstart: {description['backbone']} over {len(description['classes'])} classes"
    converted.input_description["image"] = (
        f"float32 [1, 3, {size}, {size}]: resized, centre-cropped and normalised as the 'preprocessing' metadata says"
    )
    activation = "sigmoid per tag" if description.get("task") == "multi-label" else "softmax"
    converted.output_description["logits"] = (
        f"one per class, in the order of the 'classes' metadata; probabilities by {activation}"
    )
    if "unknown_score" in converted.output_description:
        converted.output_description["unknown_score"] = "above the 'headstart' metadata's unknown.threshold: unknown"
    metadata = converted.user_defined_metadata
    metadata["headstart"] = json.dumps(description)
    metadata["classes"] = json.dumps(description["classes"])
    metadata["preprocessing"] = json.dumps(description["preprocessing"])


def read_metadata(package: Path) -> dict[str, Any]:
    """The description stored in a model.mlpackage headstart wrote (readable on any system)."""
    with _coremltools("reading a Core ML model") as ct:
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    text = spec.description.metadata.userDefined.get("headstart")
    if text is None:
        raise HeadstartError(f"{package} holds no 'headstart' metadata: it was not written by headstart export")
    return json.loads(text)
