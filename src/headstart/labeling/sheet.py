"""suggest's outputs: to_label.csv (path,label,guess,confidence,why; label left to fill in) and to_label.html."""

from __future__ import annotations

import csv
import html
import io
import shlex
from dataclasses import dataclass
from pathlib import Path

from headstart.core.fileio import atomic_write, writing
from headstart.data.thumbnails import thumbnail

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em}figure{display:inline-block;width:220px;margin:6px;"
    "vertical-align:top}img{max-width:216px;max-height:216px}figcaption{font-size:12px;word-break:break-all}"
    ".guess{font-weight:600}pre{background:#f4f4f4;padding:.6em}"
)


@dataclass
class Pick:
    path: Path
    why: str
    guess: str = ""
    confidence: float | None = None


@dataclass
class SuggestResult:
    out: Path
    picks: list[Pick]
    images: int  # unlabelled images considered

    @property
    def csv(self) -> Path:
        return self.out / "to_label.csv"

    @property
    def html(self) -> Path:
        return self.out / "to_label.html"


def sheet_csv(result: SuggestResult) -> str:
    """Absolute paths, so the filled-in sheet trains from wherever it is passed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "guess", "confidence", "why"])
    for pick in result.picks:
        confidence = "" if pick.confidence is None else f"{pick.confidence:.4f}"
        writer.writerow([str(pick.path.resolve()), "", pick.guess, confidence, pick.why])
    return buffer.getvalue()


def next_command(result: SuggestResult, folder: str | Path, run: str | Path | None, data: dict | None = None) -> str:
    """The train command for the filled-in sheet: after a run, the run's data (`data`: its recipe's data section)
    with the sheets it added already, so no earlier round's labels are left out."""
    sheet = shlex.quote(str(result.csv))
    if run is None:
        return f"headstart train {sheet}"
    data = data or {}
    path = shlex.quote(str(data["path"])) if data.get("path") else "DATA"
    earlier = "".join(f" --add-labeled {shlex.quote(str(added))}" for added in data.get("add_labeled") or [])
    return f"headstart train {path}{earlier} --add-labeled {sheet} --unlabeled {shlex.quote(str(folder))}"


def page(result: SuggestResult, folder: str | Path, run: str | Path | None, data: dict | None = None) -> str:
    figures = []
    for number, pick in enumerate(result.picks, 1):
        guess = f"<span class='guess'>guess: {html.escape(pick.guess)}</span><br>" if pick.guess else ""
        source = thumbnail(pick.path)
        image = f'<img src="{source}" alt="{html.escape(pick.path.name)}">' if source else "(unreadable)"
        figures.append(
            f"<figure>{image}<figcaption>{number}. {html.escape(pick.path.name)}<br>{guess}"
            f"{html.escape(pick.why)}</figcaption></figure>"
        )
    how = "typical images of the folder (nothing labelled yet)" if run is None else f"where {run} is least sure"
    title = f"to label: {len(result.picks)} of {result.images} images in {folder}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>Picked: {html.escape(how)}.</p>\n"
        + "\n".join(figures)
        + f"\n<h2>Next</h2><p>Fill in the label column of {html.escape(str(result.csv))}, then:</p>"
        f"<pre>{html.escape(next_command(result, folder, run, data))}</pre>\n</body></html>\n"
    )


def write_sheet(result: SuggestResult, folder: str | Path, run: str | Path | None, data: dict | None = None) -> None:
    with writing(result.out):
        result.out.mkdir(parents=True, exist_ok=True)
        atomic_write(result.csv, sheet_csv(result).encode())
        atomic_write(result.html, page(result, folder, run, data).encode())
