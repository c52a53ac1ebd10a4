"""What an inspect run knows about a data set once every file is opened and embedded: the input of every finding kind."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from headstart.data.duplicates import Finding, Item, Thresholds, exact_findings, near_findings


@dataclass
class Facts:
    """One file as opened: size and mode, the decoded pixels' digest, or why it could not be read."""

    width: int = 0
    height: int = 0
    mode: str = ""
    digest: str | None = None
    error: str = ""
    thumbnail: np.ndarray | None = None  # 64x64 grayscale, squashed (headstart.data.pixel_match.looks)
    colour: np.ndarray | None = None  # mean RGB


@dataclass
class Evidence:
    items: list[Item]
    facts: list[Facts]  # one per item, in order
    rows: list[int]  # the items read and embedded, in order
    vectors: np.ndarray  # their embeddings, one row each
    thresholds: Thresholds  # a near duplicate's pixels match at least this well
    seed: int
    multi_label: bool = False  # labels are space-joined tags (an image's whole tag set is its label for duplicates)

    @property
    def embedded(self) -> list[Item]:
        return [self.items[i] for i in self.rows]

    @cached_property
    def duplicate_pairs(self) -> list[Finding]:
        """Exact, then near duplicate rows, each pair with its leak and conflicting_label rows.

        One pass yields four kinds (a pair is found once, then classified), so their finders share it.
        """
        found = exact_findings(self.items, [f.digest for f in self.facts])
        facts = [self.facts[i] for i in self.rows]
        looks = [(f.thumbnail, f.colour) for f in facts if f.thumbnail is not None and f.colour is not None]
        assert len(looks) == len(facts)  # the rows are the items read, and reading sets both
        if not looks:
            return found
        thumbs, colours = np.stack([t for t, _ in looks]), np.stack([c for _, c in looks])
        digests = [f.digest for f in facts]
        return found + near_findings(self.embedded, self.vectors, digests, (thumbs, colours), self.thresholds)
