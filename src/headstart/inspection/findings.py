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


def percent(probability: float) -> str:
    return f"{round(100 * probability)} %"


def label_words(finding: Finding) -> str:
    extra = finding.extra
    if "p_suggested" not in extra:  # multi-label: tags to add and to drop
        changes = [
            f"add {extra['add']}" if extra.get("add") else "",
            f"drop {extra['drop']}" if extra.get("drop") else "",
        ]
        return f"tagged {extra['label']}; looks like it should {' and '.join(c for c in changes if c)}"
    label, suggested = extra["label"], extra["suggested"]
    return (
        f"filed as {label}, looks like {suggested} "
        f"({percent(extra['p_suggested'])} {suggested}, {percent(extra['p_given'])} {label})"
    )


def copy_words(finding: Finding) -> str:
    extra = finding.extra
    if finding.kind == "exact_duplicate":
        return "the same pixels as the picture on the right"
    if finding.kind == "conflicting_label":
        return f"filed as {extra['label']}; its copy (right) as {extra['other_label']}"
    copy = "a copy" if finding.kind == "near_duplicate" or extra.get("via") == "near_duplicate" else "an exact copy"
    where = f"in {extra['split']}, {copy} of a {extra['other_split']} picture" if finding.kind == "leak" else copy
    return where + (f" (pixel match {finding.score:.2f})" if finding.score < 1 else "")


@dataclass(frozen=True)
class FindingKind:
    name: str  # findings.csv's kind column
    caption: str  # what the kind means, in plain words, under its heading in inspect.html
    find: Finder
    # The relative paths a finding leaves out of clean.csv (given the label margin); `keep` leaves none out.
    leaves_out: Callable[[Finding, float], tuple[str, ...]] = keep
    # One finding in plain words, under its pictures in inspect.html.
    describe: Callable[[Finding], str] = lambda finding: finding.extra.get("reason", "")


KINDS: tuple[FindingKind, ...] = (
    FindingKind(
        "leak",
        "Pictures in a held-out split that copy a picture of an earlier split (train before val before test): "
        "every score measured on them is too good. clean.csv leaves the held-out copy (left) out.",
        duplicate_rows("leak"),
        drop_path,
        copy_words,
    ),
    FindingKind(
        "exact_duplicate",
        "Files with identical pixels: clean.csv keeps the one on the right and leaves the copy (left) out.",
        duplicate_rows("exact_duplicate"),
        drop_path,
        copy_words,
    ),
    FindingKind(
        "conflicting_label",
        "The same picture filed under two classes: clean.csv leaves both out until you decide which is right.",
        duplicate_rows("conflicting_label"),
        drop_both,
        copy_words,
    ),
    FindingKind(
        "near_duplicate",
        "Copies of one picture, resized (aspect kept or squashed), cropped, re-encoded or mildly recoloured: "
        "their fine detail matches once one is aligned on the other, and their colours are close. clean.csv "
        "keeps both (leaks aside): delete one if they should not count twice.",
        duplicate_rows("near_duplicate"),
        keep,
        copy_words,
    ),
    FindingKind(
        "label_issue",
        "Pictures whose class looks wrong: models trained without them put them in another class. Most sure "
        "first. clean.csv leaves out those where the suggested class beats the given one by the label margin.",
        lambda evidence: tag_issue_rows(evidence) if evidence.multi_label else label_issue_rows(evidence),
        drop_confident,
        label_words,
    ),
    FindingKind(
        "outlier",
        "Pictures unlike every class: perhaps from another data set, blank, or a class of their own. clean.csv keeps them.",
        outlier_rows,
        keep,
        lambda finding: f"filed as {finding.extra['label']}, unlike every class",
    ),
    FindingKind(
        "unreadable",
        "Files that cannot be opened as pictures: training skips them, and clean.csv leaves them out.",
        unreadable,
        drop_path,
    ),
    FindingKind("odd_image", "Tiny, huge or very elongated pictures: clean.csv keeps them.", odd_images),
)


def kind_names() -> tuple[str, ...]:
    return tuple(kind.name for kind in KINDS)


def find_all(evidence: Evidence) -> list[Finding]:
    return [finding for kind in KINDS for finding in kind.find(evidence)]
