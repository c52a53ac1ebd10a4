"""Writing a model file: any format's writer into a temporary name, published by one rename, with its sidecar's name.

Shared by export (one run's model) and deploy.ensemble (several runs' models as one).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from headstart.core.errors import HeadstartError
from headstart.core.fileio import writing
from headstart.deploy.formats import Format

SIDECAR_FORMAT = "headstart-export-1"
PACKAGE_MANIFEST = "Manifest.json"  # in every Core ML .mlpackage folder


def sidecar_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def write_module(
    chosen: Format, model: torch.nn.Module, size: int, target: Path, sidecar: dict[str, Any] | None = None
) -> None:
    """`model` (images [N, 3, size, size] in) as `chosen` writes it, published by one rename."""
    assert chosen.write is not None, f"format {chosen.name} has neither write nor export_run"
    example = torch.zeros(chosen.batch or 2, 3, size, size)
    temporary = target.with_name(f".{target.stem}.partial{target.suffix}")  # torch.export wants the .pt2 suffix
    try:
        with writing(target), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters warn about internals the user cannot act on
            target.parent.mkdir(parents=True, exist_ok=True)
            chosen.write(model, example, temporary, sidecar or {})
            publish(temporary, target)
    finally:
        remove_partial(temporary)  # what a full disk left half-written


def publish(written: Path, target: Path) -> None:
    """Rename `written` to `target`; a package folder (Core ML) replaces only an earlier package, never another folder."""
    if not target.is_dir():
        written.replace(target)
        return
    if not written.is_dir() or not (target / PACKAGE_MANIFEST).is_file():
        raise HeadstartError(f"{target} is a folder that export did not write: give --out another path")
    earlier = target.with_name(f".{target.stem}.earlier{target.suffix}")
    target.replace(earlier)
    written.replace(target)
    shutil.rmtree(earlier)


def remove_partial(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
