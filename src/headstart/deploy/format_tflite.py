"""LiteRT (TensorFlow Lite): a .tflite file written by litert-torch, run by ai-edge-litert's interpreter.

The file takes one image at a time, [1, 3, S, S] float32 as the description's preprocessing makes
it, and returns the logits (and the unknown-image score, computed in float32). The description
export writes beside the file is also inside it, as JSON under the metadata name "headstart", so
an app that ships only the .tflite file still has its classes and preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.deploy.unknown import in_float32

METADATA_NAME = "headstart"
FILE_IDENTIFIER = b"TFL3"  # every TFLite flatbuffer carries it


def write(model: torch.nn.Module, example: torch.Tensor, target: Path, description: dict[str, Any]) -> None:
    try:
        import litert_torch
    except ImportError as err:
        raise HeadstartError(f"LiteRT export needs litert-torch ({err}); {install_hint('tflite')}") from None
    # The example is one image (Format.batch): litert-torch cannot keep the batch open through TF 'same' padding.
    converted = litert_torch.convert(in_float32(model).eval(), (example,))
    target.write_bytes(with_metadata(converted.model_content(), METADATA_NAME, json.dumps(description).encode()))


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise HeadstartError(
            f"reading or running a LiteRT model needs ai-edge-litert; {install_hint('tflite')}"
        ) from None
    return schema_py_generated


def with_metadata(model: bytes, name: str, value: bytes) -> bytes:
    """The flatbuffer `model` with one more metadata entry, `name` -> a buffer holding `value`."""
    import flatbuffers  # ai-edge-litert's own dependency

    schema = _schema()
    unpacked = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value, dtype=np.uint8)
    unpacked.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(unpacked.buffers) - 1
    unpacked.metadata = [m for m in unpacked.metadata or [] if m.name not in (name, name.encode())] + [entry]
    builder = flatbuffers.Builder(len(model) + len(value) + 1024)
    builder.Finish(unpacked.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def read_metadata(model_file: Path) -> dict[str, Any]:
    """The description stored inside a .tflite file headstart wrote (classes, preprocessing, …)."""
    schema = _schema()
    data = model_file.read_bytes()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise HeadstartError(f"{model_file} is not a LiteRT (.tflite) model")
    model = schema.Model.GetRootAsModel(data, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() == METADATA_NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    raise HeadstartError(f"{model_file} holds no '{METADATA_NAME}' metadata: it was not written by headstart export")


def load(model_file: Path):
    """images [N,3,S,S] -> logits (and the unknown score, where the file has that output), one image at a time."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise HeadstartError(f"running a LiteRT model needs ai-edge-litert; {install_hint('tflite')}") from None
    try:
        interpreter = Interpreter(model_path=str(model_file))
        runner = interpreter.get_signature_runner()
        signature = next(iter(interpreter.get_signature_list().values()))
    except (ValueError, RuntimeError, StopIteration) as err:
        raise HeadstartError(f"cannot load {model_file} with LiteRT: {str(err).splitlines()[0][:160]}") from None
    (input_name,) = signature["inputs"]
    outputs = sorted(signature["outputs"])  # output_0: the logits, output_1: the unknown-image score

    def forward(batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        rows = [runner(**{input_name: image[None].numpy()}) for image in batch.float().cpu()]
        if not rows:
            raise HeadstartError(f"{model_file}: no images to run")
        stacked = [torch.from_numpy(np.concatenate([row[name] for row in rows])) for name in outputs]
        return stacked[0] if len(stacked) == 1 else tuple(stacked)

    return forward
