"""The export formats: one `Format` per `headstart export --format NAME`, in the order the CLI lists them.

A new format is one module (format_<name>.py with `write` and, for a file a runtime here can run, `load`)
plus one `Format(...)` line in FORMATS below; `export`, `headstart.load`, predict and the CLI's
`--format` / `--quantize` choices all read FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headstart.core.checkpoint import Checkpoint
from headstart.deploy import format_coreml, format_onnx, format_pt2, format_tflite, format_torchscript
from headstart.deploy.hub import export_hub

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Format:
    """What `--format NAME` writes and which runtime runs it back."""

    name: str  # --format NAME; a model file's description records it as its "runtime"
    file_name: str  # written under RUN/export/ unless --out names another path
    suffix: str = ""  # headstart.load and predict know a model file by it ("" for a folder)
    # (model, example batch, path, description) -> the model file; export() writes the description beside it,
    # and a format whose files hold metadata (LiteRT, Core ML) puts it inside too.
    write: Callable[[torch.nn.Module, torch.Tensor, Path, dict[str, Any]], None] | None = None
    # model file -> images [N,3,S,S] -> logits; None for a format no runtime here runs from a file.
    load: Callable[[Path], Forward] | None = None
    # --quantize NAME -> (model file, checkpoint, description) -> the quantized file's path.
    quantize: Mapping[str, Callable[[Path, Checkpoint, dict[str, Any]], Path]] = field(default_factory=dict)
    # A format that writes a whole folder of its own (weights, config, card) from the run instead of `write`.
    export_run: Callable[[str | Path, str | Path | None], Path] | None = None
    # Where files of a format without a `load` here do run: what headstart.load says when given one.
    runs_on: str = ""
    # The batch size a file takes when it cannot take any (LiteRT and Core ML files take one image a call).
    batch: int | None = None


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", "model.onnx", ".onnx", format_onnx.write, format_onnx.load, {"int8": format_onnx.quantize_int8}),
        Format("export", "model.pt2", ".pt2", format_pt2.write, format_pt2.load),
        Format("torchscript", "model.torchscript", ".torchscript", format_torchscript.write, format_torchscript.load),
        Format("tflite", "model.tflite", ".tflite", format_tflite.write, format_tflite.load, batch=1),
        Format("coreml", "model.mlpackage", ".mlpackage", format_coreml.write, runs_on=format_coreml.RUNS_ON, batch=1),
        Format("hub", "hub", export_run=export_hub),
    )
}


def runtimes() -> tuple[str, ...]:
    """The formats whose files headstart runs itself: the "runtime" values a model file's description may hold."""
    return tuple(name for name, f in FORMATS.items() if f.load is not None)


def quantizations() -> tuple[str, ...]:
    return tuple(dict.fromkeys(q for f in FORMATS.values() for q in f.quantize))


def model_suffixes() -> tuple[str, ...]:
    return tuple(f.suffix for f in FORMATS.values() if f.suffix)


def not_run_here(path: Path) -> Format | None:
    """The format of a model file or package headstart writes but cannot run here (Core ML), else None."""
    return next((f for f in FORMATS.values() if f.runs_on and f.suffix and path.suffix == f.suffix), None)
