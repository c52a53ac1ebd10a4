"""torch.export: a .pt2 archive of the traced program, loaded back by torch.export after a safety check."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import torch

from headstart.core.errors import HeadstartError
from headstart.deploy.pt2_safety import check_pt2_archive


def write(model: torch.nn.Module, example: torch.Tensor, target: Path, description: dict[str, Any]) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(target))


def load(model_file: Path) -> torch.nn.Module:
    """A .pt2 file's module; a damaged file is the one-line error (torch would log a traceback while failing)."""
    if not zipfile.is_zipfile(model_file):
        raise HeadstartError(f"cannot load {model_file} with torch.export: not a .pt2 archive (damaged or truncated?)")
    vetted = check_pt2_archive(model_file)  # the checked copy is what torch reads: nothing in it runs code
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return torch.export.load(vetted).module()
    except Exception as err:  # noqa: BLE001 - a file torch.export cannot read, whatever the reason
        raise HeadstartError(f"cannot load {model_file} with torch.export: {str(err).splitlines()[0][:160]}") from None
    finally:
        quiet.setLevel(level)
