"""Small JPEG thumbnails as data: URIs, so an HTML page (inspect.html, to_label.html) carries its pictures in one file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from headstart.data.images import to_rgb


def thumbnail(path: Path, size: int = 128) -> str:
    """A data: URI of the image shrunk to fit 2 x size (sharp on high-density screens); '' for an unreadable file."""
    try:
        with Image.open(path) as image:
            rgb = to_rgb(image)
            rgb.thumbnail((size * 2, size * 2))
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=80)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
