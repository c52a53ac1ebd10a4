"""Reading YAML the user wrote (recipes, sweep files, a run's recipe.yaml): bounded, and without anchors or aliases.

A recipe has no need for `&anchor` / `*alias`, and they are what a billion-laughs file is made of:
530 bytes of nested aliases expand into a structure that hung `train --dry-run` until it ran out
of memory. So the loader refuses them outright, and a file is refused by size before it is parsed
(a 50 MB recipe took 77 s to reach its error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from headstart.core.errors import HeadstartError
from headstart.core.fileio import read_capped

MAX_YAML_BYTES = 1 << 20  # the largest recipe shipped is ~2 KB


class AliasRefused(yaml.YAMLError):
    def __init__(self, line: int):
        super().__init__(f"line {line}: YAML anchors and aliases (&name, *name) are not allowed; write each value out")


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first anchor or alias, before anything is built from it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise AliasRefused(event.start_mark.line + 1)
        return super().compose_node(parent, index)


def parse(text: str | bytes) -> Any:
    """YAML text as Python values; yaml.YAMLError (AliasRefused included) for anything else."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: no tags that build Python objects


def read_yaml(path: str | Path, what: str = "recipe") -> Any:
    """The values in the YAML file `path`, or a one-line HeadstartError naming the file and what is allowed."""
    path = Path(path)
    data = read_capped(path, MAX_YAML_BYTES, f"{what} (YAML)")
    try:
        return parse(data)
    except AliasRefused as err:
        raise HeadstartError(f"{path}: {err}") from None
    except yaml.YAMLError as err:  # PyYAML reads bytes as UTF-8/16 itself; other encodings land here
        raise HeadstartError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
