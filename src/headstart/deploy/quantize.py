"""int8 ONNX: onnxruntime's static quantization, calibrated on the run's own validation images.

    headstart export RUN --format onnx --quantize int8  ->  model.onnx, model.int8.onnx (+ .json each)

Static quantization fixes each activation's int8 range from real inputs, so the calibration
images matter: they are the validation split the run measured itself on, through the same eval
transform. Weights are quantized per output channel (QDQ format), which keeps the accuracy cost
small on CNNs (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from headstart.config.recipe import Recipe
from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write, writing
from headstart.core.install import install_hint

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
MAX_CALIBRATION_IMAGES = 512  # ranges settle long before this; more only costs time


def calibration_batches(checkpoint: Checkpoint) -> list[np.ndarray]:
    """The run's validation images, eval-transformed, as float32 batches [B, 3, S, S]."""
    from headstart.data.images import build_transforms, decode_all, short_side_for
    from headstart.data.layouts import list_images

    recipe = Recipe.from_dict(checkpoint.recipe, source="checkpoint recipe")
    try:
        split = list_images(recipe.data)
    except HeadstartError as err:
        raise HeadstartError(f"int8 calibration needs the run's validation images: {err}") from None
    if split.classes != checkpoint.classes:
        raise HeadstartError("int8 calibration: the data folder's classes changed since training")
    pre: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in checkpoint.preprocessing.items()}
    arrays, _, _ = decode_all(
        split.val[:MAX_CALIBRATION_IMAGES], short_side_for(pre), pre["interpolation"], os.cpu_count() or 1
    )
    if not arrays:
        raise HeadstartError("int8 calibration: no readable validation images")
    _, transform = build_transforms(pre, "none")
    tensors = [transform(Image.fromarray(a)) for a in arrays]
    return [torch.stack(tensors[i : i + CALIBRATION_BATCH]).numpy() for i in range(0, len(tensors), CALIBRATION_BATCH)]


def int8_threshold(model_file: Path, batches: list[np.ndarray], fitted: dict[str, Any]) -> dict[str, Any]:
    """The unknown-image threshold again, on the int8 model's scores of the same val images.

    int8 features lie a little off the float ones, which the whitened distance magnifies: the float
    threshold would flag more of the images the model knows.
    """
    import onnxruntime

    from headstart.tasks.unknown import threshold_for

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    scores = torch.cat(
        [torch.from_numpy(session.run(["unknown_score"], {"image": batch})[0]) for batch in batches]
    ).double()
    threshold = threshold_for(scores)
    rate = float((scores > threshold).double().mean())
    return {**fitted, "threshold": threshold, "val_rate": rate, "refitted": f"for int8 on {len(scores)} val images"}


def quantize_onnx(fp32: Path, checkpoint: Checkpoint, sidecar: dict[str, Any]) -> Path:
    """Write model.int8.onnx beside the fp32 file, with its own description; returns its path."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise HeadstartError(f"int8 quantization needs onnxruntime; {install_hint('export')}") from None
    batches = calibration_batches(checkpoint)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.queue = iter(batches)

        def get_next(self):
            batch = next(self.queue, None)
            return None if batch is None else {"image": batch}

    target = fp32.with_name(fp32.stem + ".int8.onnx")
    prepared = fp32.with_name(f".{fp32.stem}.prepared.onnx")
    partial = target.with_name(f".{target.name}.partial")
    with writing(target):
        try:
            # Shape inference and graph folding first, as onnxruntime recommends before static quantization.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(partial),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            partial.replace(target)
        finally:
            prepared.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
    count = sum(len(b) for b in batches)
    described = dict(
        sidecar, quantization=f"int8 static (QDQ, per-channel weights), calibrated on {count} validation images"
    )
    if sidecar.get("unknown") is not None:
        described["unknown"] = int8_threshold(target, batches, sidecar["unknown"])
    atomic_write(target.with_name(target.name + ".json"), json.dumps(described, indent=1).encode())
    log.info("quantized %s to int8, calibrated on %d validation images", target, count)
    return target
