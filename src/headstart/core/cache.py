"""Cache entries: built in a staging folder, published by one rename, verified before every reuse.

Decoded images, cached features and the written data sets (digits, CIFAR) are entries: folders
under $HEADSTART_CACHE/<kind>/<key>/. An entry is complete when its manifest (`MANIFEST.json`,
written last) is there; the manifest lists every file with its size and a SHA-256 (of the whole
file up to CHECKSUM_BYTES, beyond that of its first and last CHECKSUM_BYTES / 2), and what the
entry was built for (`meta`, e.g. the digest of the sample list its rows follow). Before reuse
every file is checked against it and `meta` against what the caller expects now, so a truncated,
missing, reordered or swapped file is never used: the entry is rebuilt with one warning.

Staging folders carry the building process's id; one whose process is gone (killed, or stopped
by a full disk) is removed by the next build in that folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from headstart.core.fileio import writing

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
CHECKSUM_BYTES = 1 << 30
_STAGING = re.compile(r"^\.staging-(?P<pid>\d+)-")
# Staging folders of headstart versions before this module carried no process id: removed once old.
_LEGACY_STAGING = re.compile(r"^(\.[0-9a-f]{24}-|\.images-|digits-|cifar10-|cifar100-)")
_LEGACY_AGE_S = 3600


def checksum(path: Path) -> str:
    """SHA-256 of the file (of its first and last CHECKSUM_BYTES / 2 when bigger: reading terabytes is no check)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as stream:
        spans = (
            [(0, size)] if size <= CHECKSUM_BYTES else [(0, CHECKSUM_BYTES // 2), (size - CHECKSUM_BYTES // 2, size)]
        )
        for start, end in spans:
            stream.seek(start)
            remaining = end - start
            while remaining > 0:
                block = stream.read(min(remaining, 1 << 22))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
    return digest.hexdigest()


def content_key(
    fields: dict[str, Any] | None = None,
    files: Iterable[tuple[Path, Any]] = (),
    blobs: Iterable[bytes] = (),
    length: int = 24,
) -> str:
    """The one key for a cache entry: SHA-256 of everything that changes what the entry holds.

    fields: settings, as canonical JSON (sorted keys); files: (path, label) pairs, each by its path,
    size, modification time and label, so a changed folder gives a new key without reading a pixel;
    blobs: raw bytes (a prefix's weights). Returns the first `length` hex digits.
    """
    digest = hashlib.sha256(json.dumps(fields or {}, sort_keys=True, default=str).encode())
    for path, label in files:
        info = os.stat(path)
        # fsencode: a file name that is not UTF-8 (Latin-1 from an old archive) is its raw bytes, not an error.
        digest.update(os.fsencode(path) + f"|{info.st_size}|{info.st_mtime_ns}|{label}\n".encode())
    for blob in blobs:
        digest.update(blob)
    return digest.hexdigest()[:length]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, meta: dict[str, Any], checksums: bool = True) -> None:
    """Record every file of a finished entry (size, and SHA-256 when `checksums`) and what it was built for."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": checksum(p) if checksums else None}
        for p in _files(folder)
    }
    text = json.dumps({"meta": meta, "files": files}, indent=1, sort_keys=True, default=str)
    (folder / MANIFEST).write_text(text)


def problem(folder: Path, meta: dict[str, Any]) -> str | None:
    """Why the entry at `folder` cannot be reused (None when every file matches its manifest and `meta` matches)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files, stored_meta = manifest["files"], manifest["meta"]
    except FileNotFoundError:
        return "no manifest: an unfinished or older entry"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest ({type(err).__name__})"
    if json.loads(json.dumps(meta, sort_keys=True, default=str)) != stored_meta:
        return "built for other data (its index checksum or shape differs)"
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{name} has {path.stat().st_size} bytes, {record['size']} were written"
        if record.get("sha256") and checksum(path) != record["sha256"]:
            return f"{name} changed since it was written (checksum differs)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(parent: Path) -> list[str]:
    """Staging folders in `parent` whose building process is gone (killed, or stopped by a full disk): removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        match = _STAGING.match(entry.name)
        stale = (match is not None and not _pid_alive(int(match["pid"]))) or (
            match is None
            and _LEGACY_STAGING.match(entry.name) is not None
            and time.time() - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_AGE_S
        )
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("removed %d staging folder(s) left by killed cache builds in %s", len(removed), parent)
    return removed


def reusable(folder: Path, meta: dict[str, Any], what: str, check: Callable[[Path], str | None] | None = None) -> bool:
    """Whether the entry at `folder` verifies (see `ensure`); a broken one is removed with one warning."""
    if not folder.exists():
        return False
    reason = problem(folder, meta) or (check(folder) if check else None)
    if reason is None:
        return True
    log.warning("%s cache entry %s is broken (%s): rebuilding it", what, folder, reason)
    shutil.rmtree(folder)
    return False


@contextlib.contextmanager
def building(folder: Path, meta: dict[str, Any], checksums: bool = True) -> Iterator[Path]:
    """A staging folder to fill; when the block ends normally it gets its manifest and is published at `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-{folder.name}-", dir=folder.parent))
    try:
        yield staging
        write_manifest(staging, meta, checksums)
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process published the same entry first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-built entry filling the disk
        raise


def ensure(
    folder: Path,
    build: Callable[[Path], None],
    meta: dict[str, Any],
    what: str,
    checksums: bool = True,
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """The entry at `folder`, reused if it verifies, else (re)built by `build(staging)` and published by rename.

    meta: what the entry is for (index checksums, row counts); a stored entry with other meta is rebuilt.
    check: an extra test of a stored entry (e.g. array shapes), returning why it is unusable or None.
    A broken entry is rebuilt with one warning naming what was wrong; OS errors while building
    (a full disk, a read-only cache) become the one-line error naming the cache folder.
    """
    with writing(folder, "cache"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(folder.parent)
        if reusable(folder, meta, what, check):
            return folder
        with building(folder, meta, checksums) as staging:
            build(staging)
    return folder
