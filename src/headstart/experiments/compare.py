"""Runs side by side: a table (Markdown and CSV) and overlaid curves, with seeds as repeats.

    headstart compare SWEEP_DIR            # variants as the sweep named them
    headstart compare RUN_DIR RUN_DIR ...  # runs with the same recipe but the seed are one variant,
                                           # labelled by the recipe fields that differ

A variant's figures are means over its seeds with the sample standard deviation. The "best.pt"
figures are the scores of the model each run kept (its best epoch by its own run.monitor), the wall
time is the run's (summary.txt, else last.pt). Variants are ranked by that monitor (the one most
runs use, said in a note when runs differ), and every variant is set against the best one: a
difference smaller than the seed-to-seed spread is said to be so, with Welch's t-test p-value where
both have two or more seeds. Runs on different data (recipe data.path) are compared with a warning.
Files: comparison.md, .csv and .png in the sweep folder, or in `comparison/` beside the runs.

Example:
    >>> comparison = headstart.compare(["runs/sweep-hymenoptera"])
    >>> print(comparison.markdown)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.config.describe import flatten
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.paths import safe_component, user_path
from headstart.core.runs import (
    ERROR_FILE,
    HISTORY_JSON,
    LAST_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    atomic_write,
    epoch_rows,
    find_test_record,
    read_records,
)
from headstart.core.yamlfile import read_yaml
from headstart.deploy.ensemble import ensemble_members
from headstart.experiments.columns import HEADERS, METRICS, TAG_METRICS, TAG_SCORES, cell
from headstart.tasks.metrics import LOWER_IS_BETTER, best_index

log = logging.getLogger("headstart")

# Fields that differ between repeats of one experiment, not between experiments.
NOT_A_SWITCH = {"run.seed", "run.name", "run.out_dir"}


@dataclass
class RunRecord:
    path: Path
    variant: str
    seed: int
    recipe: dict[str, Any]
    history: list[dict[str, Any]]
    # The chosen model's test-split score (history.json's test record); None without a test split.
    test: dict[str, Any] | None = None
    # What the run's data is when a sweep varies data.path on purpose (cv's folds): the sweep's data, not the run's.
    data_label: str | None = None

    @property
    def monitor(self) -> str:
        return str(self.recipe.get("run", {}).get("monitor", "val_loss"))

    @property
    def data(self) -> str:
        return self.data_label or str(self.recipe.get("data", {}).get("path") or "embedded digits")

    def metrics(self) -> dict[str, float]:
        """The kept model's val scores (best.pt: the best epoch by run.monitor), the last epoch's, test, the run's time."""
        best, last = self.history[best_index(self.history, self.monitor)], self.history[-1]
        test = self.test or {}
        nan = float("nan")  # a run from before a metric existed, or without a test split
        scores = ("val_loss", "val_acc", "val_balanced_acc", "val_f1", *(f"val_{k}" for k in TAG_SCORES))
        return {
            **{f"best_{key}": best.get(key, nan) for key in scores},
            **{f"test_{key}": test.get(key, nan) for key in ("loss", "acc", "balanced_acc", "f1", *TAG_SCORES)},
            **{f"final_{key}": last.get(key, nan) for key in scores},
            "epochs": len(self.history),
            "seconds": run_seconds(self.path),
            "trainable_params": last.get("trainable_params") or 0,
        }


def run_seconds(run_dir: Path) -> float:
    """The run's wall time: summary.txt's, else the time last.pt had counted; NaN when neither says."""
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        found = re.findall(r"wall time ([0-9.]+)s", summary.read_text(errors="replace"))
        if found:
            return float(found[-1])
    if (run_dir / LAST_FILE).is_file():
        from headstart.core.checkpoint import load_checkpoint

        try:
            resume = load_checkpoint(run_dir / LAST_FILE).resume
        except HeadstartError:
            return float("nan")
        return float(resume.elapsed) if resume is not None else float("nan")
    return float("nan")


@dataclass
class Comparison:
    records: list[RunRecord]
    rows: list[dict[str, Any]]  # one per variant: name, runs, seeds, metric -> (mean, std)
    notes: list[str]
    failed: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """The columns: multi-label scores when every run is multi-label, else the single-label ones."""
        tagged = self.records and all(all("val_map" in row for row in r.history) for r in self.records)
        return TAG_METRICS if tagged else METRICS

    @property
    def markdown(self) -> str:
        header = ["variant", "runs"] + [HEADERS[m] for m in self.metrics]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [row["variant"], str(row["runs"])] + [cell(metric, *row[metric]) for metric in self.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- {note}" for note in self.notes] + [f"- failed: {item}" for item in self.failed]
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    @property
    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["variant", "runs", "seeds"] + [f"{m}_{s}" for m in self.metrics for s in ("mean", "std")])
        for row in self.rows:
            writer.writerow(
                [row["variant"], row["runs"], " ".join(map(str, row["seeds"]))]
                + [_number(v) for m in self.metrics for v in row[m]]
            )
        return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# ----------------------------------------------------------------------------- collecting runs


# A run read from its folder: (recipe, epoch rows, test record or None).
RunFiles = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]


def _read_run(path: Path) -> RunFiles | None:
    history_file, recipe_file = path / HISTORY_JSON, path / RECIPE_FILE
    if not history_file.is_file() or not recipe_file.is_file():
        return None
    records = read_records(history_file)
    history = epoch_rows(records)
    if not history:
        return None
    recipe = Recipe.from_yaml(recipe_file).to_dict()
    recipe["data"]["path"] = absolute_where_found(recipe["data"].get("path"))
    return recipe, history, find_test_record(records)


def absolute_where_found(data_path: str | None) -> str | None:
    """A relative data.path as the absolute path it names from here, where that exists.

    A recipe keeps the path as typed, so `train data/ants` and `train /home/me/data/ants` would
    otherwise read as two data sets (a warning, and a data.path "switch" between the runs).
    """
    if not data_path or Path(data_path).is_absolute() or not user_path(data_path).exists():
        return data_path
    return str(user_path(data_path).resolve())


def _read_sweep_spec(path: Path) -> tuple[list[str], list[int], str | None]:
    """(variant names, seeds, the data when the variants vary data.path) of a sweep folder's sweep file.

    A damaged one is a one-line error. A sweep whose variants set data.path (cv's folds) compares
    runs on different data on purpose: they are labelled with the sweep's own data, so no warning.
    """
    spec_file = path / SWEEP_FILE
    spec = read_yaml(spec_file, "sweep file")
    try:
        variants, seeds = [str(v) for v in spec["variants"]], [int(s) for s in spec["seeds"]]
        changes = spec["variants"].values() if isinstance(spec["variants"], dict) else []
        varied = any(isinstance(c, dict) and "data.path" in c for c in changes)
        data = str((spec.get("recipe") or {}).get("data", {}).get("path") or "embedded digits")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HeadstartError(
            f"{spec_file} is damaged ({type(err).__name__}); it lists a sweep's variants and seeds"
        ) from None
    label = f"{data} (data.path varied by the sweep)" if varied else None
    return [safe_component(v, f"{spec_file}: variant") for v in variants], seeds, label


def _label_by_difference(groups: dict[str, list[tuple[Path, *RunFiles]]]) -> dict[str, str]:
    """Name each group of identical recipes by the fields in which the groups differ."""
    flat = {key: flatten(runs[0][1]) for key, runs in groups.items()}
    keys = sorted({k for f in flat.values() for k in f} - NOT_A_SWITCH)
    differing = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat.values()}) > 1]
    labels = {}
    for key, fields in flat.items():
        shown = [f"{k.removeprefix('stages.')}={fields.get(k)}" for k in differing[:4]]
        labels[key] = ", ".join(shown) if shown else groups[key][0][0].name
    return labels


def collect(paths: list[str | Path]) -> tuple[list[RunRecord], list[str]]:
    """Runs from sweep folders and run folders; returns the records and the runs that failed or never finished an epoch."""
    records: list[RunRecord] = []
    failed: list[str] = []
    loose: dict[str, list[tuple[Path, *RunFiles]]] = {}
    for given in paths:
        path = user_path(given)
        if not path.is_dir():
            raise HeadstartError(f"not a folder: {path} (give run folders or a sweep folder)")
        if (path / SWEEP_FILE).is_file():
            variants, seeds, data_label = _read_sweep_spec(path)
            for variant in variants:
                for seed in seeds:
                    run_dir = path / variant / f"seed{seed}"
                    found, error = _read_run(run_dir), run_dir / ERROR_FILE
                    if found is None or error.is_file():
                        reason = error.read_text().strip() if error.is_file() else "not run yet"
                        failed.append(f"{variant} seed {seed}: {reason}")
                        continue
                    records.append(RunRecord(run_dir, variant, seed, *found, data_label=data_label))
        else:
            found = _read_run(path)
            if found is None and ensemble_members(path) is not None:
                raise HeadstartError(
                    f"{path} is an ensemble (train --budget): its summary.txt scores it; compare its members, "
                    f"{path / 'members'}/*, or the ensemble against a run with headstart evaluate"
                )
            if found is None:
                raise HeadstartError(
                    f"{path} is neither a run folder (recipe.yaml + history.json) nor a sweep folder ({SWEEP_FILE})"
                )
            recipe = found[0]
            key = json.dumps(
                {k: v for k, v in flatten(recipe).items() if k not in NOT_A_SWITCH}, sort_keys=True, default=str
            )
            loose.setdefault(key, []).append((path, *found))
    labels = _label_by_difference(loose) if loose else {}
    for key, runs in loose.items():
        for path, recipe, history, test in runs:
            records.append(RunRecord(path, labels[key], recipe["run"]["seed"], recipe, history, test))
    if not records:
        raise HeadstartError("no finished epochs to compare in " + ", ".join(map(str, paths)))
    return records, failed


# ----------------------------------------------------------------------------- the comparison


def _stats(values: list[float]) -> tuple[float, float | None]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def ranking_monitor(records: list[RunRecord]) -> tuple[str, list[str]]:
    """The run.monitor variants are ranked by (the one most runs use), and notes when runs differ in it or in data."""
    monitors = [record.monitor for record in records]
    monitor = max(dict.fromkeys(monitors), key=monitors.count)
    notes = []
    if len(set(monitors)) > 1:
        notes.append(
            "runs differ in run.monitor ("
            + "; ".join(f"{m}: {_names(r for r in records if r.monitor == m)}" for m in dict.fromkeys(monitors))
            + f"): each best.pt is its own run's choice; ranked by best.pt {monitor}"
        )
    data = list(dict.fromkeys(record.data for record in records))
    if len(data) > 1:
        warning = "runs differ in data, their scores are not comparable: " + "; ".join(
            f"{path}: {_names(r for r in records if r.data == path)}" for path in data
        )
        log.warning("compare: %s", warning)
        notes.insert(0, "WARNING: " + warning)
    return monitor, notes


def _names(records) -> str:
    return ", ".join(dict.fromkeys(record.variant for record in records))


def summarize(records: list[RunRecord], monitor: str = "val_loss") -> list[dict[str, Any]]:
    """One row per variant, best first by the mean of best.pt's `monitor` (variants without it last)."""
    by_variant: dict[str, list[RunRecord]] = {}
    for record in records:
        by_variant.setdefault(record.variant, []).append(record)
    rows = []
    for variant, runs in by_variant.items():
        metrics = [run.metrics() for run in runs]
        row: dict[str, Any] = {"variant": variant, "runs": len(runs), "seeds": [run.seed for run in runs]}
        row.update({m: _stats([values[m] for values in metrics]) for m in metrics[0]})
        row["samples"] = {m: [values[m] for values in metrics] for m in metrics[0]}
        rows.append(row)
    sign = 1 if monitor in LOWER_IS_BETTER else -1

    def rank(row: dict[str, Any]) -> tuple[bool, float]:
        value = row[f"best_{monitor}"][0]
        return math.isnan(value), sign * value if not math.isnan(value) else 0.0

    return sorted(rows, key=rank)


def spread_notes(rows: list[dict[str, Any]], monitor: str = "val_loss") -> list[str]:
    """For each variant against the best: are its differences in `monitor` (best.pt's, the last epoch's) bigger than the seed spread?"""
    if len(rows) < 2:
        return []
    from scipy.stats import ttest_ind

    best = rows[0]
    direction = "lowest" if monitor in LOWER_IS_BETTER else "highest"
    notes = [f"reference: {best['variant']} ({direction} mean {HEADERS['best_' + monitor]}; run.monitor {monitor})"]
    for row in rows[1:]:
        parts = []
        for metric in (f"best_{monitor}", f"final_{monitor}"):
            difference = row[metric][0] - best[metric][0]
            spreads = [s for s in (row[metric][1], best[metric][1]) if s is not None]
            text = f"{HEADERS[metric]} {difference:+.4f}"
            if len(spreads) < 2:
                text += " (one seed on a side: no spread to judge it by; use --seeds 3)"
            else:
                spread = max(spreads)
                p_value = ttest_ind(row["samples"][metric], best["samples"][metric], equal_var=False).pvalue
                verdict = (
                    "smaller than the seed-to-seed spread, not a real difference at these seeds"
                    if abs(difference) < spread
                    else "larger than the seed-to-seed spread"
                )
                text += f" (spread {spread:.4f}: {verdict}; Welch p = {p_value:.2g})"
            parts.append(text)
        notes.append(f"{row['variant']} vs {best['variant']}: " + "; ".join(parts))
    return notes


def compare(paths: list[str | Path], out: str | Path | None = None) -> Comparison:
    """Compare runs and sweeps; writes comparison.md, .csv and .png to `out`.

    By default they go into the sweep folder, or for run folders into a folder of their own,
    `comparison/` beside the first run (never among the run folders themselves).
    """
    from headstart.core.plots import plot_overlay

    records, failed = collect(paths)
    monitor, notes = ranking_monitor(records)
    rows = summarize(records, monitor)
    if any(record.data_label for record in records):  # cv's folds: each validated on other images
        notes.append(
            "each variant ran on its own data.path (cross-validation folds): their differences are fold-to-fold variation"
        )
    else:
        notes += spread_notes(rows, monitor)
    comparison = Comparison(records, rows, notes, failed)
    first = user_path(paths[0])
    folder = user_path(out) if out else (first if (first / SWEEP_FILE).is_file() else first.parent / "comparison")
    atomic_write(folder / "comparison.md", comparison.markdown.encode())
    atomic_write(folder / "comparison.csv", comparison.csv.encode())
    plot_overlay([(r.variant, r.history) for r in records], folder / "comparison.png")
    comparison.files = {name: folder / f"comparison.{name}" for name in ("md", "csv", "png")}
    return comparison
