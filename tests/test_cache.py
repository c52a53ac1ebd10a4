"""core/cache.py: an entry is built once, checked against its manifest before reuse, and rebuilt with one warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from headstart.core import cache
from headstart.core.errors import HeadstartError


class Builder:
    """A build function that writes two small files and counts its calls."""

    def __init__(self, text: str = "rows"):
        self.calls = 0
        self.text = text

    def __call__(self, staging: Path) -> None:
        self.calls += 1
        (staging / "rows.txt").write_text(self.text)
        (staging / "sub").mkdir()
        (staging / "sub" / "array.bin").write_bytes(bytes(range(64)))


META = {"index": "abc123", "rows": 2}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_ensure_builds_once_then_reuses(tmp_path):
    build = Builder()
    folder = tmp_path / "kind" / "key"
    assert cache.ensure(folder, build, META, "test") == folder
    assert cache.ensure(folder, build, META, "test") == folder
    assert build.calls == 1
    assert (folder / "rows.txt").read_text() == "rows"
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert manifest["meta"] == META
    assert set(manifest["files"]) == {"rows.txt", "sub/array.bin"}
    assert manifest["files"]["rows.txt"]["size"] == 4
    assert manifest["files"]["rows.txt"]["sha256"] == cache.checksum(folder / "rows.txt")
    assert leftovers(folder.parent) == []  # the staging folder was renamed into place


DAMAGE = {
    "truncated": (lambda f: (f / "rows.txt").write_text("ro"), "rows.txt has 2 bytes, 4 were written"),
    "same size, other bytes": (lambda f: (f / "rows.txt").write_text("ROWS"), "checksum differs"),
    "file missing": (lambda f: (f / "sub" / "array.bin").unlink(), "sub/array.bin is missing"),
    "manifest missing": (lambda f: (f / cache.MANIFEST).unlink(), "no manifest"),
    "manifest damaged": (lambda f: (f / cache.MANIFEST).write_text("{not json"), "unreadable manifest"),
    "manifest without files": (lambda f: (f / cache.MANIFEST).write_text('{"meta": {}}'), "unreadable manifest"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    spoil, reason = DAMAGE[damage]
    build = Builder()
    folder = cache.ensure(tmp_path / "key", build, META, "test")
    spoil(folder)
    assert cache.problem(folder, META) is not None and reason in cache.problem(folder, META)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        cache.ensure(folder, build, META, "test")
    assert build.calls == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "test cache entry" in warnings[0] and reason in warnings[0], warnings
    assert cache.problem(folder, META) is None and (folder / "rows.txt").read_text() == "rows"


def test_an_entry_built_for_other_data_is_rebuilt(tmp_path, caplog):
    build = Builder()
    folder = cache.ensure(tmp_path / "key", build, META, "test")
    other = {**META, "index": "def456"}
    assert "built for other data" in cache.problem(folder, other)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        cache.ensure(folder, build, other, "test")
    assert build.calls == 2 and "built for other data" in caplog.text
    assert json.loads((folder / cache.MANIFEST).read_text())["meta"] == other
    # Meta is compared as JSON: a tuple and a list of the same values are the same entry.
    cache.ensure(folder, build, {**other, "shape": (2, 3)}, "test")
    cache.ensure(folder, build, {**other, "shape": [2, 3]}, "test")
    assert build.calls == 3


def test_without_checksums_only_sizes_are_checked(tmp_path):
    build = Builder()
    folder = cache.ensure(tmp_path / "key", build, META, "test", checksums=False)
    assert json.loads((folder / cache.MANIFEST).read_text())["files"]["rows.txt"]["sha256"] is None
    (folder / "rows.txt").write_text("ROWS")  # same size: accepted
    cache.ensure(folder, build, META, "test", checksums=False)
    assert build.calls == 1
    (folder / "rows.txt").write_text("row")  # other size: rebuilt
    cache.ensure(folder, build, META, "test", checksums=False)
    assert build.calls == 2


def test_the_callers_own_check_can_refuse_an_entry(tmp_path, caplog):
    build = Builder()
    folder = cache.ensure(tmp_path / "key", build, META, "test")
    with caplog.at_level(logging.WARNING, logger="headstart"):
        cache.ensure(folder, build, META, "test", check=lambda f: "array of the wrong shape")
    assert build.calls == 2 and "array of the wrong shape" in caplog.text
    cache.ensure(folder, build, META, "test", check=lambda f: None)
    assert build.calls == 2


def test_a_failed_build_leaves_neither_entry_nor_staging(tmp_path):
    def broken(staging: Path) -> None:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("stopped halfway")

    with pytest.raises(RuntimeError, match="stopped halfway"):
        cache.ensure(tmp_path / "key", broken, META, "test")
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_while_building_is_the_one_line_error_naming_the_cache(tmp_path):
    def full(staging: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(HeadstartError, match=r"cannot write .*key: no space left .*HEADSTART_CACHE"):
        cache.ensure(tmp_path / "key", full, META, "test")
    assert list(tmp_path.iterdir()) == []


def test_staging_folders_of_dead_builders_are_removed_and_live_ones_kept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(gone.stdout), os.getpid()
    (tmp_path / f".staging-{dead}-key-x").mkdir()
    (tmp_path / f".staging-{alive}-key-y").mkdir()
    (tmp_path / "plain").mkdir()
    assert cache.remove_stale_staging(tmp_path) == [f".staging-{dead}-key-x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".staging-{alive}-key-y", "plain"]
    cache.ensure(tmp_path / "key", Builder(), META, "test")  # a build cleans its parent folder the same way
    assert (tmp_path / f".staging-{alive}-key-y").is_dir()
