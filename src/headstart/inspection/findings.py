"""The kinds of finding `headstart inspect` reports, in the order findings.csv, the summary and inspect.html show them.

A new kind is one module with a `find(evidence) -> list[Finding]` function (headstart.inspection.evidence
holds what the run knows) plus one `FindingKind(...)` line in KINDS below; the inspect run, the
row order, the console summary, inspect.html's sections and clean.csv all iterate over KINDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from headstart.data.duplicates import Finding
from headstart.inspection.evidence import Evidence
from headstart.inspection.inventory import odd_images, unreadable
from headstart.inspection.label_issues import label_issue_rows, outlier_rows
from headstart.inspection.tag_issues import tag_issue_rows

Finder = Callable[[Evidence], list[Finding]]


def keep(finding: Finding, label_margin: float) -> tuple[str, ...]:
    return ()


def drop_path(finding: Finding, label_margin: float) -> tuple[str, ...]:
    return (finding.path,)


def drop_both(finding: Finding, label_margin: float) -> tuple[str, ...]:
    return (finding.path, finding.other)


def drop_confident(finding: Finding, label_margin: float) -> tuple[str, ...]:
    return (finding.path,) if finding.extra["margin"] >= label_margin else ()


def duplicate_rows(kind: str) -> Finder:
    """The rows of one kind from the duplicate pass (Evidence.duplicate_pairs), which finds four kinds at once."""
    return lambda evidence: [f for f in evidence.duplicate_pairs if f.kind == kind]


@dataclass(frozen=True)
class FindingKind:
    name: str  # findings.csv's kind column
    caption: str  # one line in plain words under the kind's heading in inspect.html
    find: Finder
    # The relative paths a finding leaves out of clean.csv (given the label margin); `keep` leaves none out.
    leaves_out: Callable[[Finding, float], tuple[str, ...]] = keep


KINDS: tuple[FindingKind, ...] = (
    FindingKind(
        "leak",
        "the same picture in two splits: the held-out copy (left) inflates every score measured on it",
        duplicate_rows("leak"),
        drop_path,
    ),
    FindingKind(
        "exact_duplicate",
        "identical decoded pixels: the copy (left) and the one kept (right)",
        duplicate_rows("exact_duplicate"),
        drop_path,
    ),
    FindingKind(
        "conflicting_label",
        "the same picture filed under two classes",
        duplicate_rows("conflicting_label"),
        drop_both,
    ),
    FindingKind(
        "near_duplicate",
        "copies of one picture, resized (aspect kept or squashed), cropped, re-encoded or recoloured: their "
        "fine detail matches once one is aligned on the other",
        duplicate_rows("near_duplicate"),
    ),
    FindingKind(
        "label_issue",
        "out-of-fold heads predict another class (multi-label: other tags, found by cleanlab's multi-label "
        "method); score 1 - p(given) (multi-label: 1 - label quality), most suspicious first; "
        "confident: flagged by confident learning",
        lambda evidence: tag_issue_rows(evidence) if evidence.multi_label else label_issue_rows(evidence),
        drop_confident,
    ),
    FindingKind("outlier", "far from every class in embedding space (score: robust z below the median)", outlier_rows),
    FindingKind("unreadable", "files Pillow cannot decode (training skips them)", unreadable, drop_path),
    FindingKind("odd_image", "tiny, huge or extreme-aspect pictures", odd_images),
)


def kind_names() -> tuple[str, ...]:
    return tuple(kind.name for kind in KINDS)


def find_all(evidence: Evidence) -> list[Finding]:
    return [finding for kind in KINDS for finding in kind.find(evidence)]
