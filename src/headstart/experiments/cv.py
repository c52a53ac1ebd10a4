"""Stratified k-fold cross-validation of a recipe: every train + val image validated exactly once, mean ± std over folds.

    headstart cv DATA --folds 5 [--recipe FILE] [recipe flags]

The data's train and val images are pooled (sorted by path) and cut into K folds by scikit-learn's
StratifiedKFold, shuffled with data.split_seed (multi-label data: iterative stratification's
MultilabelStratifiedKFold), so every class keeps its share in every fold; fold k's model trains on the
other K-1 folds and is validated on fold k. A test split the data has (a test/ folder, test rows,
data.test_fraction) stays out of the folds and is every fold model's test split, scored once each.

Layout (runs/<name>-cv/, <name> from --name, else the data's):
    folds/fold1.csv ...   each fold's images as path,label,split (train, val and the data's test)
    fold1/seed0/ ...      each fold an ordinary run folder on its CSV: a sweep over data.path (sweep.yaml),
                          so compare and report read the cv folder, and running it again continues it
    cv.md, cv.json        every best.pt val score and every test score per fold, with the mean and the
                          sample standard deviation over the folds
    ensemble/             with --ensemble: the fold models as one averaging their calibrated probabilities

Example:
    >>> result = headstart.cv("photos/", folds=5)
    >>> result.scores["val_acc"]["mean"], result.scores["val_acc"]["std"]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.config.defaults import as_recipe
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.runs import CV_FILE, CV_JSON, FOLDS_DIR
from headstart.data.layouts import list_images
from headstart.data.splits import SINGLE, DataSplit, Sample, label_counts
from headstart.experiments.compare import RunRecord
from headstart.experiments.sweep import experiment_folder, sweep
from headstart.tasks.metrics import best_index
from headstart.training.session import ensure_console

log = logging.getLogger("headstart")


@dataclass
class CVResult:
    path: Path  # the cv folder
    folds: int
    monitor: str
    runs: dict[str, Path]  # fold name -> its run folder
    failed: dict[str, str] = field(default_factory=dict)  # run folder -> why it failed
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # score -> mean, std, values (fold -> value)
    markdown: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    ensemble: Path | None = None


def check_folds(folds: Any) -> int:
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise HeadstartError(
            f"--folds {folds}: give 2 or more (each fold is validated by a model trained on the others)"
        )
    return folds


def check_class_sizes(folds: int, split: DataSplit, pool: list[Sample]) -> None:
    """Every fold's val part needs an image of every class (tag): at most as many folds as the smallest class has."""
    counts = label_counts([label for _, label in pool], len(split.classes))
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        kind = "class" if split.task == SINGLE else "tag"
        raise HeadstartError(
            f"--folds {folds}: {kind} '{split.classes[smallest]}' has {counts[smallest]} image(s) in train + val, "
            f"and every fold validates at least one of each; give --folds {max(2, int(counts[smallest]))} or fewer"
            + (" (or add images)" if counts[smallest] < 2 else "")
        )


def fold_val_indices(split: DataSplit, pool: list[Sample], folds: int, seed: int) -> list[np.ndarray]:
    """Each fold's val images as indices into `pool`: disjoint, together all of it, stratified by class (or tags)."""
    if split.task == SINGLE:
        from sklearn.model_selection import StratifiedKFold

        labels = np.array([label for _, label in pool])
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [val for _, val in splitter.split(np.zeros(len(pool)), labels)]
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    matrix = np.zeros((len(pool), len(split.classes)), dtype=np.int64)
    for row, (_, label) in enumerate(pool):
        matrix[row, list(label if isinstance(label, tuple) else (label,))] = 1
    multi = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(val) for _, val in multi.split(np.zeros(len(pool)), matrix)]


def fold_csv(split: DataSplit, pool: list[Sample], val: np.ndarray, delim: str) -> str:
    """One fold as path,label,split rows (multi-label: path,labels,split with the tags joined by data.label_delim)."""

    def label_text(label: Any) -> str:
        tags = label if isinstance(label, tuple) else (label,)
        return delim.join(split.classes[k] for k in tags) if split.task != SINGLE else split.classes[label]

    chosen = set(val.tolist())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label" if split.task == SINGLE else "labels", "split"])
    for index, (path, label) in enumerate(pool):
        writer.writerow([str(path.absolute()), label_text(label), "val" if index in chosen else "train"])
    for path, label in split.test:
        writer.writerow([str(path.absolute()), label_text(label), "test"])
    return buffer.getvalue()


def write_folds(folder: Path, texts: list[str]) -> list[Path]:
    """folds/foldK.csv; a fold file that differs from what this data gives now is an error, not overwritten."""
    paths = []
    for number, text in enumerate(texts, start=1):
        path = folder / FOLDS_DIR / f"fold{number}.csv"
        if path.is_file() and path.read_text() != text:
            raise HeadstartError(
                f"{path} lists other images than the data gives now (the data or --folds changed); "
                "give another --name, or remove that folder"
            )
        if not path.is_file():
            atomic_write(path, text.encode())
        paths.append(path)
    return paths


def fold_base(recipe: Recipe, split: DataSplit) -> Recipe:
    """The recipe each fold runs, on its own CSV: the splits are given there, and added labels are in the pool."""
    values = recipe.to_dict()
    values["data"].update(test_fraction=0.0, add_labeled=[], task=split.task, image_column=None, label_column=None)
    return Recipe.from_dict(values, source="cv fold recipe")


def fold_scores(record: RunRecord) -> dict[str, float]:
    """A fold run's best.pt val scores (its best epoch by run.monitor) and its test scores."""
    best = record.history[best_index(record.history, record.monitor)]
    scores = {k: float(v) for k, v in best.items() if k.startswith("val_") and isinstance(v, (int, float))}
    test = record.test or {}
    numeric = {k: v for k, v in test.items() if isinstance(v, (int, float)) and k != "images"}
    return scores | {f"test_{k}": float(v) for k, v in numeric.items()}


def summarize(records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    """score -> {mean, std (sample, None for one fold), values: fold -> value}, over the finished folds."""
    per_fold = {record.variant: fold_scores(record) for record in sorted(records, key=lambda r: int(r.variant[4:]))}
    names = list(dict.fromkeys(name for scores in per_fold.values() for name in scores))
    summary = {}
    for name in names:
        values = {fold: scores[name] for fold, scores in per_fold.items() if name in scores}
        numbers = list(values.values())
        std = statistics.stdev(numbers) if len(numbers) > 1 else None
        summary[name] = {"mean": statistics.fmean(numbers), "std": std, "values": values}
    return summary


def markdown(result: CVResult, data: str, pool: int, val_sizes: list[int], test: int) -> str:
    finished = len(result.runs) - len(result.failed)
    per_fold = str(min(val_sizes)) if min(val_sizes) == max(val_sizes) else f"{min(val_sizes)}-{max(val_sizes)}"
    lines = [
        f"# headstart cv: {result.path.name}",
        "",
        f"{result.folds}-fold stratified cross-validation of {data}: {pool} train + val images, each validated "
        f"once ({per_fold} per fold); {test} test image(s), kept out of the folds",
        f"scores: each fold's best.pt (chosen by {result.monitor}); mean ± sample standard deviation over "
        f"{finished} of {result.folds} folds",
        "",
    ]
    folds = list(result.runs)
    lines += ["| score | mean ± std | " + " | ".join(folds) + " |", "|" + "---|" * (2 + len(folds))]
    for name, score in result.scores.items():
        spread = f"{score['mean']:.4f}" + (f" ± {score['std']:.4f}" if score["std"] is not None else "")
        cells = [f"{score['values'][fold]:.4f}" if fold in score["values"] else "-" for fold in folds]
        lines.append(f"| {name} | {spread} | " + " | ".join(cells) + " |")
    lines += [f"- failed: {Path(run).parent.name}: {why}" for run, why in result.failed.items()]
    return "\n".join(lines) + "\n"


def write_ensemble(result: CVResult, format: str) -> Path | None:
    """The fold models as one (CV/ensemble/); skipped, with a warning, while a fold has not finished."""
    from headstart.deploy.ensemble import export_ensemble

    if result.failed:
        count = len(result.failed)
        log.warning("cv %s: no ensemble while %d fold(s) failed; run cv again to finish them", result.path.name, count)
        return None
    return export_ensemble(list(result.runs.values()), result.path / "ensemble", format)


@dataclass
class FoldPlan:
    """The folds of one cv: the pooled train + val images, each fold's val indices into them, its CSV."""

    folder: Path
    split: DataSplit
    pool: list[Sample]
    vals: list[np.ndarray]
    csvs: list[Path]


def plan_folds(
    base: Recipe, folds: int, out: str | Path | None, name: str | None, ensemble: str | None = None
) -> FoldPlan:
    """List the data, check every class can be in every fold, cut the folds and write their CSVs."""
    split = list_images(base.data)
    pool = sorted(split.train + split.val, key=lambda sample: str(sample[0]))
    check_class_sizes(folds, split, pool)
    if ensemble is not None and split.task != SINGLE:  # said now, not after every fold has trained
        raise HeadstartError(
            f"--ensemble averages single-label models' probabilities; {split.name} is {split.task} data"
        )
    folder = experiment_folder(base, out, name, "cv")
    vals = fold_val_indices(split, pool, folds, base.data.split_seed)
    csvs = write_folds(folder, [fold_csv(split, pool, val, base.data.label_delim) for val in vals])
    log.info(
        "cv %s: %d folds of %d train + val images, %d test image(s) kept out",
        folder.name,
        folds,
        len(pool),
        len(split.test),
    )
    return FoldPlan(folder, split, pool, vals, csvs)


def write_summary(result: CVResult, plan: FoldPlan, base: Recipe) -> None:
    """cv.md and cv.json."""
    data = base.data.path or "the embedded digits"
    sizes = [len(v) for v in plan.vals]
    result.markdown = markdown(result, data, len(plan.pool), sizes, len(plan.split.test))
    if result.ensemble is not None:
        result.markdown += f"\nensemble of the {result.folds} fold models: {result.ensemble.relative_to(result.path)}\n"
    summary = {
        "data": data,
        "folds": result.folds,
        "split_seed": base.data.split_seed,
        "monitor": result.monitor,
        "images": {"train_val": len(plan.pool), "val_per_fold": sizes, "test": len(plan.split.test)},
        "scores": result.scores,
        "runs": {fold: str(path) for fold, path in result.runs.items()},
        "failed": result.failed,
        "ensemble": str(result.ensemble.relative_to(result.path)) if result.ensemble else None,
    }
    atomic_write(result.path / CV_FILE, result.markdown.encode())
    atomic_write(result.path / CV_JSON, (json.dumps(summary, indent=1) + "\n").encode())
    result.files = {"md": result.path / CV_FILE, "json": result.path / CV_JSON}


def cv(
    recipe: Recipe | str | Path | dict | None = None,
    *,
    folds: int = 5,
    out: str | Path | None = None,
    name: str | None = None,
    ensemble: str | None = None,
    quiet: bool = False,
) -> CVResult:
    """Cross-validate `recipe` (a Recipe, dict, YAML path, or a data folder/CSV with its default recipe) over `folds`.

    Writes the cv folder described in the module docstring and returns the scores per fold with
    their mean and standard deviation. Running it again continues: finished folds are kept.
    ensemble: also write the fold models as one model averaging their calibrated probabilities, in this
    export format ('onnx', 'export', 'torchscript', 'tflite'; headstart.deploy.ensemble), into CV/ensemble/.
    """
    from headstart.deploy.ensemble import ensemble_formats

    folds = check_folds(folds)
    if ensemble is not None and ensemble not in ensemble_formats():
        raise HeadstartError(f"--ensemble {ensemble}: valid formats: {', '.join(ensemble_formats())}")
    ensure_console(quiet)
    base = as_recipe(recipe)
    plan = plan_folds(base, folds, out, name, ensemble)
    variants = {f"fold{k}": {"data.path": str(path)} for k, path in enumerate(plan.csvs, start=1)}
    recipe_of_folds = fold_base(base, plan.split)
    swept = sweep(
        recipe_of_folds,
        variants=variants,
        seeds=[base.run.seed],
        out=plan.folder.parent,
        name=plan.folder.name,
        quiet=quiet,
    )
    records = swept.comparison.records
    monitor = records[0].monitor if records else str(base.run.monitor)
    result = CVResult(plan.folder, folds, monitor, {v: dirs[0] for v, dirs in swept.runs.items()}, swept.failed)
    result.scores = summarize(records)
    write_summary(result, plan, base)  # before the ensemble: a converter that fails loses no scores
    if ensemble is not None:
        result.ensemble = write_ensemble(result, ensemble)
        write_summary(result, plan, base)
    return result
