"""Writing files: atomically, and an OS error (read-only folder, full disk) becomes the one-line error naming the path.

Every command that writes (train, evaluate, predict --csv, export, report, compare, the caches)
goes through `writing`, so a full disk or a read-only folder ends with

    headstart: error: cannot write runs/x/best.pt: no space left on the device (errno 28); ...

instead of a traceback, and whatever the command computed before is already printed.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headstart.core.errors import HeadstartError

# What the user can do about each kind of failure (keyed by OSError.errno, which may be None).
_ADVICE: dict[int | None, str] = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is mounted read-only; write elsewhere",
    errno.EACCES: "no permission to write there; write elsewhere",
    errno.EPERM: "no permission to write there; write elsewhere",
}
_ADVICE_HINT = {
    "out": " (--out for train, sweep, compare, report, export; --csv / --confusion for predict / evaluate)",
    "cache": " ($HEADSTART_CACHE moves the cache)",
}


def describe_os_error(err: OSError, path: str | Path, what: str = "out") -> str:
    """One line: which path could not be written, why (the OS's words) and what to do."""
    reason = (err.strerror or type(err).__name__).lower()
    advice = _ADVICE.get(err.errno, "check the folder exists and is writable")
    hint = _ADVICE_HINT.get(what, "") if err.errno in _ADVICE else ""
    return f"cannot write {path}: {reason} (errno {err.errno}); {advice}{hint}"


@contextmanager
def writing(path: str | Path, what: str = "out") -> Iterator[None]:
    """Run the block that writes `path`; an OSError from it is re-raised as a HeadstartError naming `path`.

    what: 'out' for the user's output files, 'cache' for $HEADSTART_CACHE (the hint differs).
    """
    try:
        yield
    except HeadstartError:
        raise
    except OSError as err:
        raise HeadstartError(describe_os_error(err, path, what)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp make files and folders only their owner can read; run files, and folders meant
# for sharing, get the permissions any new file or folder would.
FILE_MODE = 0o666 & ~_umask()
FOLDER_MODE = 0o777 & ~_umask()


def default_permissions(folder: Path) -> None:
    """`folder` and everything in it get the umask's modes (a mkdtemp folder is 0700; some writers make 0600 files)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`; OS errors become one-line errors."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(handle, FILE_MODE)
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)  # a full disk keeps no half-written file
            raise


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """A user's file read whole, or the one-line error: not a regular file (a FIFO would block), unreadable, too big.

    The size is checked while reading (one byte past the cap), so a file that grows meanwhile is caught too.
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise HeadstartError(f"{path}: not a regular file; a {what} is a file")
        with open(path, "rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as err:
        raise HeadstartError(f"cannot read {path}: {(err.strerror or type(err).__name__).lower()}") from None
    if len(data) > max_bytes:
        raise HeadstartError(f"{path}: too large for a {what} (at most {max_bytes:,} bytes)")
    return data
