"""One self-contained HTML page per run or sweep: every picture inlined, nothing fetched, no scripts.

    headstart report RUN_DIR     ->  RUN_DIR/report.html
    headstart report SWEEP_DIR   ->  SWEEP_DIR/report.html

A run's page: summary, recipe, model layers with the trainable/frozen split per stage, curves,
and, from the best checkpoint on the run's own validation split, per-class metrics, the
confusion matrix and the validation images it got wrong with the most confidence. A sweep's page:
the comparison table with its seed-spread notes, the overlaid curves and every run's figures.

Example:
    >>> headstart.report("runs/hymenoptera-tf_efficientnet_lite0")
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

from PIL import Image

from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path
from headstart.core.runs import (
    BEST_FILE,
    CURVES_FILE,
    CV_FILE,
    HISTORY_JSON,
    RELIABILITY_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    TUNE_FILE,
    TUNE_PLOT,
    atomic_write,
    read_history,
    read_test,
)
from headstart.deploy.tags import TagEvaluation

log = logging.getLogger("headstart")

MISTAKES_SHOWN = 12

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img.plot { max-width: 100%; } .grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 150px; font-size: 0.75em; overflow-wrap: anywhere; } figure img { width: 150px; height: 150px; object-fit: cover; }
.note { color: #666; }
"""


def _png(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _thumbnail(path: Path, size: int = 150) -> str:
    from headstart.data.images import to_rgb

    with Image.open(path) as image:
        rgb = to_rgb(image)
        rgb.thumbnail((size * 2, size * 2))
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, sections: list[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------- one run


def model_summary(model, recipe, image_size: int) -> str:
    from headstart.model.freeze import plan_stages
    from headstart.model.layer_table import summarize

    plans = plan_stages(model, recipe.stages)
    return summarize(model, recipe.stages, plans, image_size)


def tag_validation_section(checkpoint: Checkpoint, evaluation: TagEvaluation) -> str:
    """A multi-label model on its validation split: the scores, the per-tag table and precision-recall curves."""
    buffer = io.BytesIO()
    evaluation.plot(buffer)
    rows = [
        [r["label"], f"{r['threshold']:.3f}", f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}"]
        + ["n/a" if r["average_precision"] is None else f"{r['average_precision']:.4f}", r["support"]]
        for r in evaluation.per_label
    ]
    table = _table(["tag", "threshold", "precision", "recall", "f1", "AP", "support"], rows)
    scores = evaluation.scores
    return (
        f"<h2>Validation (best checkpoint: {html.escape(str(checkpoint.stage))} epoch {checkpoint.epoch})</h2>"
        f"<p>mAP {scores['map']:.4f}, micro-F1 {scores['f1_micro']:.4f}, macro-F1 {scores['f1_macro']:.4f}, "
        f"exact match {scores['exact_match']:.4f} on {evaluation.count} images (thresholds chosen on these images)</p>"
        f'{table}<h2>Precision-recall per tag</h2><img class="plot" src="{_png(buffer.getvalue())}" alt="precision-recall curves">'
    )


def validation_section(checkpoint: Checkpoint, model, recipe) -> str:
    """Per-class metrics, confusion matrix and confident mistakes of `model` on the run's own validation split."""
    from headstart.core.plots import plot_confusion
    from headstart.data.layouts import list_images
    from headstart.deploy.predictor import Predictor

    try:
        split = list_images(recipe.data)
    except HeadstartError as err:
        return f"<h2>Validation</h2><p class=note>validation images not at hand ({html.escape(str(err))}): metrics and mistakes omitted</p>"
    if split.classes != checkpoint.classes:
        return "<h2>Validation</h2><p class=note>the data folder's classes changed since training: metrics omitted</p>"
    predictor = Predictor(
        model, checkpoint.classes, checkpoint.preprocessing, task=checkpoint.task, thresholds=checkpoint.thresholds
    )
    evaluation = predictor.evaluate_samples(split.val, where="the run's validation split")
    if isinstance(evaluation, TagEvaluation):
        return tag_validation_section(checkpoint, evaluation)
    buffer = io.BytesIO()
    plot_confusion(evaluation.confusion, evaluation.classes, buffer, title=evaluation.title)
    metrics = _table(
        ["class", "precision", "recall", "f1", "support"],
        [
            [r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
            for r in evaluation.per_class
        ],
    )
    mistakes = evaluation.most_confident_mistakes(MISTAKES_SHOWN)
    figures = "".join(
        f'<figure><img src="{_thumbnail(path)}" alt="{html.escape(path.name)}"><figcaption>true: {html.escape(true)}<br>'
        f"predicted: {html.escape(guess)} ({prob:.2f})<br>{html.escape(path.name)}</figcaption></figure>"
        for path, true, guess, prob in mistakes
    )
    grid = f'<div class="grid">{figures}</div>' if mistakes else "<p>no mistakes on the validation split</p>"
    return (
        f"<h2>Validation (best checkpoint: {html.escape(str(checkpoint.stage))} epoch {checkpoint.epoch})</h2>"
        f"<p>accuracy {evaluation.accuracy:.4f} on {evaluation.count} images</p>{metrics}"
        f'<h2>Confusion matrix</h2><img class="plot" src="{_png(buffer.getvalue())}" alt="confusion matrix">'
        f"<h2>Most confident mistakes</h2>{grid}"
    )


def calibration_section(run_dir: Path, prefix: str) -> list[str]:
    """ECE before/after the fitted temperature and the reliability plot, when the run was calibrated."""
    from headstart.core.checkpoint import load_checkpoint

    if not (run_dir / BEST_FILE).is_file():
        return []
    values = load_checkpoint(run_dir / BEST_FILE).calibration
    if not isinstance(values, dict):
        return []
    from headstart.tasks.calibration import Calibration

    line = html.escape(Calibration.from_dict(values).summary_line())
    plot = run_dir / RELIABILITY_FILE
    image = f'<img class="plot" src="{_png(plot)}" alt="reliability diagram">' if plot.is_file() else ""
    return [f"<h2>{prefix}Calibration</h2><p>{line}</p>{image}"]


def history_sections(run_dir: Path, history: list[dict], prefix: str) -> list[str]:
    """The epoch table and the test split's record, with the task's own scores."""
    sections = []
    # A multi-label run's history has mAP and micro-F1 where a single-label one has balanced accuracy and F1.
    tagged = bool(history) and all("val_map" in r for r in history)
    extra = ("val_map", "val_f1_micro") if tagged else ("val_balanced_acc", "val_f1")
    rows = [
        [
            r["stage"],
            r["epoch"],
            f"{r['train_loss']:.4f}",
            f"{r['train_acc']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['val_acc']:.4f}",
            *(f"{r.get(key, float('nan')):.4f}" for key in extra),
            f"{r['lr']:.3g}",
            f"{r['seconds']:.1f}",
            r.get("path", ""),
        ]
        for r in history
    ]
    sections.append(
        f"<h2>{prefix}History</h2>"
        + _table(
            ["stage", "epoch", "loss", "acc", "val loss", "val acc"]
            + (["val mAP", "val micro-F1"] if tagged else ["val bal. acc", "val F1"])
            + ["lr", "s", "path"],
            rows,
        )
    )
    test = read_test(run_dir)
    if test:
        names = (
            {"loss": "loss", "map": "mAP", "f1_micro": "micro-F1", "f1_macro": "macro-F1", "exact_match": "exact match"}
            if tagged
            else {"loss": "loss", "acc": "acc", "balanced_acc": "balanced acc", "f1": "macro-F1"}
        )
        cells = [[test["images"], test["model"]] + [f"{test.get(k, float('nan')):.4f}" for k in names]]
        heads = ["images", "model", *names.values()]
        sections.append(f"<h2>{prefix}Test split (scored once, after training)</h2>" + _table(heads, cells))
    return sections


def run_sections(run_dir: Path, heading: str = "") -> list[str]:
    from headstart.config.recipe import Recipe
    from headstart.core.checkpoint import load_checkpoint
    from headstart.model.build import model_from_checkpoint

    history = read_history(run_dir)
    prefix = f"{html.escape(heading)}: " if heading else ""
    sections = []
    if (run_dir / SUMMARY_FILE).is_file():
        sections.append(
            f"<h2>{prefix}Summary</h2><pre>{html.escape((run_dir / 'summary.txt').read_text(errors='replace'))}</pre>"
        )
    if (run_dir / CURVES_FILE).is_file():
        sections.append(
            f'<h2>{prefix}Curves</h2><img class="plot" src="{_png(run_dir / CURVES_FILE)}" alt="learning curves">'
        )
    sections += calibration_section(run_dir, prefix)
    sections += history_sections(run_dir, history, prefix)
    if not heading:
        checkpoint = load_checkpoint(run_dir)
        # One model, rebuilt from the best checkpoint on the CPU, for both the layer table and the validation figures.
        model, recipe = (
            model_from_checkpoint(checkpoint),
            Recipe.from_dict(checkpoint.recipe, source="checkpoint recipe"),
        )
        sections.append(
            f"<h2>Recipe</h2><pre>{html.escape((run_dir / 'recipe.yaml').read_text(errors='replace'))}</pre>"
        )
        summary = model_summary(model, recipe, checkpoint.preprocessing["image_size"])
        sections.append(f"<h2>Model: trainable (T) and frozen (-) per stage</h2><pre>{html.escape(summary)}</pre>")
        sections.append(validation_section(checkpoint, model, recipe))
    return sections


# ----------------------------------------------------------------------------- a sweep


def search_sections(folder: Path) -> list[str]:
    """A tune folder's search (tune.md and its trial plot), a cv folder's mean ± std over the folds (cv.md)."""
    sections = []
    if (folder / TUNE_FILE).is_file():
        plot = folder / TUNE_PLOT
        image = f'<img class="plot" src="{_png(plot)}" alt="trials">' if plot.is_file() else ""
        text = html.escape((folder / TUNE_FILE).read_text(errors="replace"))
        sections.append(f"<h2>Search (headstart tune)</h2>{image}<pre>{text}</pre>")
    if (folder / CV_FILE).is_file():
        text = html.escape((folder / CV_FILE).read_text(errors="replace"))
        sections.append(f"<h2>Cross-validation (headstart cv)</h2><pre>{text}</pre>")
    return sections


def sweep_sections(sweep_dir: Path) -> list[str]:
    from headstart.experiments.columns import HEADERS, cell
    from headstart.experiments.compare import compare

    comparison = compare([sweep_dir])
    sections = search_sections(sweep_dir)
    rows = [[row["variant"], row["runs"]] + [cell(m, *row[m]) for m in comparison.metrics] for row in comparison.rows]
    notes = "".join(
        f"<li>{html.escape(note)}</li>" for note in comparison.notes + [f"failed: {f}" for f in comparison.failed]
    )
    sections += [
        "<h2>Comparison (mean ± std over seeds)</h2>"
        + _table(["variant", "runs"] + [HEADERS[m] for m in comparison.metrics], rows)
        + f"<ul>{notes}</ul>",
        f'<h2>Curves overlaid</h2><img class="plot" src="{_png(comparison.files["png"])}" alt="overlaid curves">',
        f"<h2>Sweep</h2><pre>{html.escape((sweep_dir / SWEEP_FILE).read_text(errors='replace'))}</pre>",
    ]
    for record in comparison.records:
        sections.extend(run_sections(record.path, heading=f"{record.variant} seed {record.seed}"))
    return sections


def report(target: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run or sweep folder; returns its path."""
    folder = user_path(target)
    if (folder / SWEEP_FILE).is_file():
        kind = "tune" if (folder / TUNE_FILE).is_file() else "cv" if (folder / CV_FILE).is_file() else "sweep"
        sections, title = sweep_sections(folder), f"headstart {kind}: {folder.name}"
    elif (folder / HISTORY_JSON).is_file():
        sections, title = run_sections(folder), f"headstart run: {folder.name}"
    else:
        raise HeadstartError(f"{folder} is neither a run folder (history.json) nor a sweep folder ({SWEEP_FILE})")
    path = user_path(out) if out else folder / "report.html"
    atomic_write(path, _page(title, sections).encode())
    return path
