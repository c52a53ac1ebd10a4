"""Names that become paths: one check, used wherever a class, variant or run name turns into a folder."""

from __future__ import annotations

import re
from pathlib import Path

from headstart.core.errors import HeadstartError

# Control characters and the path separators of any platform a folder may later be copied to.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_component(name: str, what: str) -> str:
    """`name` if it is one harmless path component, else a one-line error naming `what` it is.

    Refused: empty names, '.', '..', anything with a path separator or a control character, and
    names that start with '~' (expanded to a home folder by some callers), so a name from a CIFAR
    meta file, a CSV label, a sweep variant or `--name` can never climb out of its folder.
    """
    if not isinstance(name, str) or not name.strip():
        raise HeadstartError(f"{what} is empty; give a name of letters, digits, '-', '_' or '.'")
    if name in {".", ".."} or name.startswith("~") or _UNSAFE.search(name):
        raise HeadstartError(
            f"{what} {name!r} is not a safe folder name: no '/', '\\', control characters, leading '~', '.' or '..'"
        )
    return name


def user_path(value: str | Path) -> Path:
    """`value` with a leading ~ or ~user expanded, as a shell would: left as written where no such home exists.

    Path.expanduser raises RuntimeError for '~nosuchuser'; bash keeps such a word literally, and so do we.
    """
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)
