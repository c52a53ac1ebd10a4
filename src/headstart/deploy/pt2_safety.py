"""Refuse a .pt2 archive that would make `torch.export.load` run code.

torch.export.load unpickles with `weights_only=False` in several places: weights and constants
marked `use_pickle`, opaque and custom objects, the legacy `.pt` state-dict files, and sample
inputs that the safe unpickler refuses (it falls back to the unsafe one); an `aotinductor` folder
is a compiled library it loads. A pickle can run any command, so a model file from elsewhere
could. headstart's own exports hold none of these, so an archive is checked entry by entry
against what a plain `torch.export.save` writes, before torch reads any of it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch

from headstart.core.errors import HeadstartError

# Entries below the archive's root folder that torch.export.save writes and that hold no pickle.
_PLAIN_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json|extra/[^/]+"
    r"|data/weights/[^/]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[^/]+_constants_config\.json|data/constants/tensor_\d+)"
)
_SAMPLE_INPUTS = re.compile(r"data/sample_inputs/[^/]+\.pt")
_PAYLOAD_CONFIGS = re.compile(r"data/(weights|constants)/[^/]+_config\.json")


def check_pt2_archive(model_file: Path) -> io.BytesIO:
    """A fresh in-memory archive of the file's entries, each checked; HeadstartError for any torch could run code from.

    torch.export.load gets this copy, not the file: what was checked is exactly what torch reads,
    even if the file changes meanwhile or another zip reader would find other entries in it.
    Entries must be stored uncompressed, as torch.export.save writes them, so none can expand.
    """
    copy = io.BytesIO()
    try:
        with zipfile.ZipFile(model_file) as archive, zipfile.ZipFile(copy, "w") as vetted:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise HeadstartError(f"cannot load {model_file}: entry {info.filename[:80]!r} is compressed")
                payload = archive.read(info)  # read once: the bytes checked are the bytes copied
                _check_entry(info, payload, model_file)
                vetted.writestr(info, payload)
    except HeadstartError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged archive (bad zip, CRC, nested JSON), whatever the reason
        raise HeadstartError(
            f"cannot load {model_file} with torch.export: {str(err)[:160] or type(err).__name__}"
        ) from None
    copy.seek(0)
    return copy


def _check_entry(info: zipfile.ZipInfo, payload: bytes, model_file: Path) -> None:
    _, _, name = info.filename.partition("/")  # every entry sits in one root folder named after the file
    if info.is_dir():
        return
    if _PAYLOAD_CONFIGS.fullmatch(name):
        pickled = [key for key, meta in json.loads(payload)["config"].items() if meta.get("use_pickle")]
        if pickled:
            _refuse(model_file, f"'{pickled[0]}' is stored as a pickle")
        return
    if _SAMPLE_INPUTS.fullmatch(name):
        try:  # torch tries this same safe load first; only its failure makes torch unpickle freely
            torch.load(io.BytesIO(payload), weights_only=True)
        except Exception:  # noqa: BLE001 - the safe unpickler's refusal, whatever it names
            _refuse(model_file, f"{name} needs an unrestricted unpickler")
        return
    if not _PLAIN_ENTRIES.fullmatch(name):
        _refuse(model_file, f"it holds {name[:80]!r}, which torch would unpickle or load as native code")


def _refuse(model_file: Path, why: str) -> None:
    raise HeadstartError(
        f"refusing to load {model_file}: {why}, and loading it could run code; "
        "export the model again with headstart export"
    )
