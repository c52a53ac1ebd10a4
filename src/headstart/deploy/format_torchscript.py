"""TorchScript: kept only while this torch traces the model without a warning (torch 2.14 deprecates torch.jit)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from headstart.core.errors import HeadstartError


def write(model: torch.nn.Module, example: torch.Tensor, target: Path, description: dict[str, Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example)
    if caught:
        raise HeadstartError(
            f"TorchScript export is retired: torch {torch.__version__} warns while tracing ({str(caught[0].message)[:90]}); "
            "use --format export (torch.export, .pt2) or --format onnx"
        )
    torch.jit.save(traced, str(target))


def load(model_file: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export (a FutureWarning or DeprecationWarning by version), still supported.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        try:
            return torch.jit.load(str(model_file), map_location="cpu").eval()
        except Exception as err:  # noqa: BLE001 - a file TorchScript cannot read, whatever the reason
            raise HeadstartError(f"cannot load {model_file} as TorchScript: {str(err).splitlines()[0][:160]}") from None
