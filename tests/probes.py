"""Helpers for hostile-input probes: a timeout for every probe, the CLI run in-process, mounts for write faults."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import headstart
from headstart.cli import main
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images


@contextlib.contextmanager
def within(seconds: float):
    """Fail a probe that takes longer than `seconds` (SIGALRM interrupts a blocking open or read too)."""

    def expire(_signum, _frame):
        raise TimeoutError(f"probe still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cli(args, capsys, seconds: float = 120) -> tuple[int, str, str]:
    """Run the command line in-process under a timeout; (exit code, stdout, stderr), a one-line error asserted on 2."""
    with within(seconds):
        code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    if code == 2:
        assert captured.err.startswith("headstart: error:") and captured.err.count("\n") == 1, captured.err
    return code, captured.out, captured.err


HANG_PROBE = """
import sys
from headstart.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args, timeout=120) -> subprocess.CompletedProcess:
    """The command line in a child process, for probes that could hang where SIGALRM cannot reach (worker threads)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-c", HANG_PROBE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def train_tiny_run(root: Path) -> tuple[Path, Path]:
    """(run folder, data folder) of a one-stage tiny run, its cache kept under `root`."""
    saved = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(root / "cache")
    try:
        data = write_images(root / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=6)
        recipe = tiny_recipe(data, root / "runs", stages=[{"name": "head", "epochs": 1, "freeze": "backbone"}])
        run_dir = headstart.train(recipe, quiet=True).run_dir
    finally:
        if saved is None:
            os.environ.pop("HEADSTART_CACHE", None)
        else:
            os.environ["HEADSTART_CACHE"] = saved
    return run_dir, data


def _mount(*args: str) -> str | None:
    """None on success, else why mount failed."""
    try:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"


class Mounts:
    """tmpfs mounts for write faults, unmounted at teardown: full (tiny) or read-only (filled first)."""

    def __init__(self):
        self.mounted: list[Path] = []

    def tmpfs(self, target: Path, size: str) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        why = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target))
        if why is not None:
            pytest.skip(f"cannot mount a tmpfs here ({why}); write faults need one, or a non-root user for chmod")
        self.mounted.append(target)
        return target

    def full(self, target: Path, size: str = "256k") -> Path:
        """A folder on a tmpfs of `size`: a bigger write fails with ENOSPC."""
        return self.tmpfs(target, size)

    def read_only(self, target: Path, contents: Path | None = None) -> Path:
        """A read-only folder holding a copy of `contents`: a tmpfs remounted ro, or chmod where we are not root."""
        if os.geteuid() != 0:  # chmod stops a non-root user; root needs a read-only mount
            if contents is not None:
                shutil.copytree(contents, target, dirs_exist_ok=True)
            for path in [target, *target.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            return target
        self.tmpfs(target, "64m")
        if contents is not None:
            shutil.copytree(contents, target, dirs_exist_ok=True)
        why = _mount("-o", "remount,ro", str(target))
        if why is not None:
            pytest.skip(f"cannot remount the tmpfs read-only ({why})")
        return target

    def release(self) -> None:
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under `root` (outside `skip`) with its size and modification time: to show nothing else was touched."""
    files = {}
    for path in root.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            info = path.stat()
            files[str(path)] = (info.st_size, info.st_mtime_ns)
    return files
