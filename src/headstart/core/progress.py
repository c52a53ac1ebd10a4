"""Progress bars for every long phase: decoding, the feature pass, embeddings, the batches of an epoch.

A bar shows (tqdm, with a rate and an ETA) only where a person watches: stderr is a terminal and
the `headstart` logger reports INFO, which `quiet=True` / `--quiet` (or a library user's own
logging set-up) turns off. Logs that are not a terminal get no bar, and no stray characters.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")


def shown() -> bool:
    """Whether bars are drawn: a terminal, and headstart's log not silenced."""
    return sys.stderr.isatty() and logging.getLogger("headstart").isEnabledFor(logging.INFO)


def progress(items: Iterable[Item], description: str, total: int | None = None, unit: str = "it") -> Iterator[Item]:
    """`items`, with a bar labelled `description` while they are consumed (see the module docstring for when)."""
    return iter(
        tqdm(items, desc=description, total=total, unit=unit, leave=False, disable=not shown(), dynamic_ncols=True)
    )
