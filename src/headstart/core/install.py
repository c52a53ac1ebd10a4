"""The pip command that adds one of headstart's extras, for the way this headstart was installed.

An editable install from a clone (`pip install -e .`) needs `pip install -e "<that clone>[extra]"`;
an install from a local folder `pip install "<that folder>[extra]"`; anything else (a wheel, an
index) `pip install 'headstart[extra]'`. pip records which in the distribution's direct_url.json.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse


def install_source() -> tuple[Path | None, bool]:
    """(the local folder headstart was installed from, or None; whether the install is editable)."""
    try:
        text = metadata.distribution("headstart").read_text("direct_url.json")
        info = json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return None, False
    url = info.get("url", "") if isinstance(info, dict) else ""
    dir_info = info.get("dir_info") if isinstance(info, dict) else None
    if not isinstance(dir_info, dict) or not url.startswith("file://"):
        return None, False
    folder = Path(unquote(urlparse(url).path))
    return (folder, bool(dir_info.get("editable"))) if folder.is_dir() else (None, False)


def install_hint(extra: str) -> str:
    """`pip install …` that adds headstart's `extra` (export, serve, track, lite) to this installation."""
    folder, editable = install_source()
    if folder is None:
        return f"pip install 'headstart[{extra}]'"
    return f'pip install {"-e " if editable else ""}"{folder}[{extra}]"'
