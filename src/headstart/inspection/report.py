"""What `headstart inspect` writes: findings.csv, clean.csv, one self-contained inspect.html, the console summary.

findings.csv   kind,path,other,score,clean (whether clean.csv keeps `path`: kept / left out) then
               extra columns (label, other_label, split, suggested, ...); paths relative to DATA
clean.csv      path,label,split of the images worth training on: exact copies, unreadable files,
               the held-out copy of every leak, both sides of a conflicting label and label
               suspects at or above the stated margin are left out. `headstart train clean.csv`
               takes it; paths are absolute, split is empty where the user gave none.
inspect.html   what was found per kind, the inventory, then per kind the most certain findings (at most
               24) with their pictures, what each one is in plain words and whether clean.csv keeps
               it; it ends with the command that trains on clean.csv. Every picture is inlined.
"""

from __future__ import annotations

import csv
import html
import io
import os
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from headstart.core.fileio import atomic_write
from headstart.data.duplicates import Finding, Item, Thresholds
from headstart.data.thumbnails import thumbnail
from headstart.inspection.findings import KINDS, FindingKind, kind_names

FIXED_COLUMNS = ["kind", "path", "other", "score", "clean"]
SHOWN_PER_KIND = 24
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; } .pair { display: flex; gap: 0.2em; }
figure { margin: 0; font-size: 0.75em; width: 260px; overflow-wrap: anywhere; }
figure img { width: 128px; height: 128px; object-fit: cover; } .note { color: #666; }
.missing { display: inline-block; width: 128px; height: 128px; background: #eee; }
.out { color: #a40000; } .kept { color: #2a6f2a; } pre { background: #f4f4f4; padding: 0.6em; }
"""


@dataclass
class InspectResult:
    """What `inspect` found: the findings, the inventory, the near-duplicate thresholds used, the output folder."""

    out: Path
    findings: list[Finding]
    inventory: dict
    thresholds: Thresholds
    kept: int = 0
    notes: list[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    order = {kind: i for i, kind in enumerate(kind_names())}
    return sorted(findings, key=lambda f: (order[f.kind], -f.score, f.path))


def summary(result: InspectResult) -> str:
    """The console summary: inventory, then one line per kind of finding."""
    inv = result.inventory
    splits = ", ".join(f"{name} {sum(c.values())}" for name, c in inv["per_split"].items())
    lines = [
        f"{inv['images']} images, {inv['classes']} classes ({splits}); imbalance {inv['imbalance']}:1; "
        f"grayscale {inv['grayscale']}, CMYK {inv['cmyk']}, 16-bit {inv['sixteen_bit']}",
    ]
    counts = Counter(f.kind for f in result.findings)
    for kind in kind_names():
        note = ""
        if kind == "near_duplicate":
            t = result.thresholds
            note = (
                f" (pixel match >= {t.match:.2f}, mean colours within {t.colour:.0f}: "
                f"{100 * t.copies:.0f} % of generated copies pass)"
            )
        lines.append(f"  {kind:<18} {counts.get(kind, 0)}{note}")
    lines.append(f"clean.csv keeps {result.kept} of {inv['images']} images; details in {result.out / 'inspect.html'}")
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())


def findings_rows(findings: list[Finding], dropped: dict[str, str]) -> tuple[list[str], list[list]]:
    extras = list(dict.fromkeys(key for f in findings for key in f.extra))
    rows = [
        [
            f.kind,
            f.path,
            f.other,
            f.score,
            "left out" if f.path in dropped else "kept",
            *(f.extra.get(k, "") for k in extras),
        ]
        for f in findings
    ]
    return FIXED_COLUMNS + extras, rows


def left_out(findings: list[Finding], label_margin: float) -> dict[str, str]:
    """Relative paths clean.csv leaves out, each with the first kind (in KINDS order) that leaves it out:
    what each kind's `leaves_out` says (headstart.inspection.findings)."""
    rule = {kind.name: kind.leaves_out for kind in KINDS}
    order = {kind.name: i for i, kind in enumerate(KINDS)}
    dropped: dict[str, str] = {}
    for f in sorted(findings, key=lambda f: order[f.kind]):
        for path in rule[f.kind](f, label_margin):
            dropped.setdefault(path, f.kind)
    return dropped


def write_outputs(result: InspectResult, items: list[Item], root: Path, label_margin: float) -> None:
    """findings.csv, clean.csv and inspect.html in result.out; sets result.kept."""
    result.out.mkdir(parents=True, exist_ok=True)
    dropped = left_out(result.findings, label_margin)
    header, rows = findings_rows(result.findings, dropped)
    write_csv(result.out / "findings.csv", header, rows)
    kept = [item for item in items if item.relative not in dropped]
    # Relative to clean.csv's own folder, as train reads a CSV's paths: the data and the report can move together.
    here = result.out.resolve()
    clean = [
        [os.path.relpath(item.path.resolve(), here), item.label, "" if item.split == "all" else item.split]
        for item in kept
    ]
    write_csv(result.out / "clean.csv", ["path", "label", "split"], clean)
    result.kept = len(kept)
    result.notes.append(
        f"clean.csv leaves out {len(items) - len(kept)} images: exact copies, unreadable files, held-out leak copies, "
        f"both sides of conflicting labels, label suspects with margin >= {label_margin}"
    )
    atomic_write(result.out / "inspect.html", page(result, root, label_margin).encode())


# ----------------------------------------------------------------------------- the HTML page


def picture(root: Path, relative: str) -> str:
    source = thumbnail(root / relative) if relative else ""
    if not source:
        return '<span class="missing"></span>'
    return f'<img src="{source}" alt="{html.escape(relative)}">'


def verdict(finding: Finding, dropped: dict[str, str]) -> str:
    """Whether clean.csv keeps the finding's picture (both pictures, for a conflicting label), in words,
    naming the finding that leaves it out where that is another kind's."""
    if finding.kind == "conflicting_label" and finding.path in dropped and finding.other in dropped:
        return '<span class="out">both left out of clean.csv</span>'
    if finding.path not in dropped:
        return '<span class="kept">kept in clean.csv</span>'
    reason = dropped[finding.path]
    because = "" if reason == finding.kind else f" (as a {reason.replace('_', ' ')})"
    return f'<span class="out">left out of clean.csv{because}</span>'


def figure(root: Path, kind: FindingKind, finding: Finding, dropped: dict[str, str]) -> str:
    pictures = picture(root, finding.path) + (picture(root, finding.other) if finding.other else "")
    names = html.escape(finding.path + (f" | {finding.other}" if finding.other else ""))
    words = html.escape(kind.describe(finding))
    return (
        f'<figure><div class="pair">{pictures}</div><figcaption>{names}<br><b>{words}</b><br>'
        f"{verdict(finding, dropped)}</figcaption></figure>"
    )


def found_table(result: InspectResult, dropped: dict[str, str]) -> str:
    """One row per kind found: how many, and how many of their pictures clean.csv leaves out."""
    rows = []
    for kind in KINDS:
        found = result.of(kind.name)
        if found:
            out = len({f.path for f in found} & dropped.keys())
            rows.append(f"<tr><td>{kind.name}</td><td>{len(found)}</td><td>{out}</td></tr>")
    if not rows:
        return "<p>Nothing found.</p>"
    return (
        "<table><tr><th>finding</th><th>found</th><th>pictures clean.csv leaves out</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def inventory_table(inventory: dict) -> str:
    classes = sorted({c for counts in inventory["per_split"].values() for c in counts})
    splits = list(inventory["per_split"])
    head = "".join(f"<th>{html.escape(s)}</th>" for s in ["class", *splits])
    body = "".join(
        f"<tr><td>{html.escape(c)}</td>"
        + "".join(f"<td>{inventory['per_split'][s].get(c, 0)}</td>" for s in splits)
        + "</tr>"
        for c in classes
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def kind_section(result: InspectResult, root: Path, kind: FindingKind, dropped: dict[str, str]) -> str:
    """The kind's heading, what it means, and its most certain findings (findings are sorted, surest first)."""
    found = result.of(kind.name)
    shown = "".join(figure(root, kind, f, dropped) for f in found[:SHOWN_PER_KIND])
    more = f" {SHOWN_PER_KIND} of {len(found)} shown, the {len(found) - SHOWN_PER_KIND} others are in findings.csv."
    note = html.escape(kind.caption + (more if len(found) > SHOWN_PER_KIND else ""))
    return f"<h2>{kind.name} ({len(found)})</h2><p class='note'>{note}</p><div class=\"grid\">{shown}</div>"


def page(result: InspectResult, root: Path, label_margin: float) -> str:
    """inspect.html: what was found, the inventory, each kind's findings, and the command to train on clean.csv."""
    inv = result.inventory
    dropped = left_out(result.findings, label_margin)
    sections = [
        "<h2>Found</h2>" + found_table(result, dropped),
        f"<p class='note'>{html.escape(' '.join(result.notes))}</p>",
        "<h2>Inventory</h2>" + inventory_table(inv),
        f"<p>colour modes: {html.escape(str(inv['modes']))}</p>",
    ]
    sections += [kind_section(result, root, kind, dropped) for kind in KINDS if result.of(kind.name)]
    command = f"headstart train {shlex.quote(str(result.out / 'clean.csv'))}"
    sections.append(
        f"<h2>Next</h2><p>Train on the {result.kept} of {inv['images']} images that clean.csv kept:</p>"
        f"<pre>{html.escape(command)}</pre>"
    )
    title = f"inspect: {root.name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
