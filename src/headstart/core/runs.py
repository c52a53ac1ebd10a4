"""The run folder: everything a run writes, and how other commands read it back.

    runs/<name>/recipe.yaml      the resolved recipe (weights source, stages, seed: all filled in)
    runs/<name>/history.csv      one row per epoch: stage, epoch, losses, accuracies, lr, seconds, trainable params
    runs/<name>/history.json     the same rows, then (once training ends, if the data has a test split)
                                 one record {"record": "test", ...}: the chosen model scored on the test split
    runs/<name>/curves.png       loss and accuracy, train vs val, stage boundaries marked
    runs/<name>/best.pt          checkpoint with the lowest val loss
    runs/<name>/last.pt          checkpoint after the last finished epoch, with what `--resume` needs:
                                 optimizer state by parameter name, schedule, RNG states
    runs/<name>/summary.txt      what ran, where the time went, the best and final figures
    runs/<name>/reliability.png  accuracy vs confidence on the val split, before and after the fitted temperature
                                 (best.pt holds the temperature and its figures: headstart.tasks.calibration)

Every file is written to a temporary name and renamed into place, so an interrupted run never
leaves a half-written file, and history is rewritten after every epoch so nothing finished is lost.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write, writing
from headstart.core.paths import safe_component, user_path

HISTORY_FIELDS = [
    "stage",
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_balanced_acc",
    "val_f1",
    "val_map",  # multi-label runs: these four instead of balanced accuracy and macro-F1
    "val_f1_micro",
    "val_f1_macro",
    "val_exact_match",
    "lr",
    "seconds",
    "path",
    "trainable_params",
    "stop",  # on a stage's last row: why it ended (its epochs ran, or early stopping and what was restored)
]
# The run folder's files by name: every other module asks for them here (checkpoints: core.checkpoint).
RECIPE_FILE = "recipe.yaml"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
CURVES_FILE = "curves.png"
RELIABILITY_FILE = "reliability.png"
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
SUMMARY_FILE = "summary.txt"
CONFUSION_FILE = "confusion.png"
SWEEP_FILE = "sweep.yaml"  # in a sweep's folder: what it sweeps (tune and cv folders hold one too, for compare)
# A tune folder (headstart.experiments.tune): the Optuna study, the space searched, the best recipe, the search's page.
STUDY_FILE = "study.db"
SPACE_FILE = "space.yaml"
BEST_RECIPE_FILE = "best.yaml"
TUNE_FILE, TUNE_JSON, TUNE_PLOT = "tune.md", "tune.json", "tune.png"
# A cv folder (headstart.experiments.cv): the folds' image lists, and mean ± std over the folds.
FOLDS_DIR = "folds"
CV_FILE, CV_JSON = "cv.md", "cv.json"
ERROR_FILE = "error.txt"  # in a run folder of a sweep: why that run failed
PSEUDO_FILE = "pseudo_labels.csv"  # the unlabelled images trained on, with their pseudo-labels (data.unlabeled)
# Every file a run writes into its folder (a sweep may remove these, and only these, from a run that finished no epoch).
RUN_FILES = frozenset(
    {
        RECIPE_FILE,
        HISTORY_CSV,
        HISTORY_JSON,
        CURVES_FILE,
        RELIABILITY_FILE,
        BEST_FILE,
        LAST_FILE,
        SUMMARY_FILE,
        ERROR_FILE,
        PSEUDO_FILE,
    }
)


class RunFolder:
    """Writes one run's files under `path`."""

    def __init__(self, path: Path, writes: bool = True):
        self.path = path
        # Data-parallel processes other than rank 0 keep the history in memory but write nothing.
        self.writes = writes
        self.history: list[dict[str, Any]] = []
        # The test-split record, written after the epochs in history.json (read_test reads it back).
        self.test: dict[str, Any] | None = None

    @classmethod
    def create(cls, out_dir: str | Path, name: str) -> RunFolder:
        """A new folder out_dir/name; an existing name gets a -2, -3 ... suffix rather than being overwritten."""
        base = user_path(out_dir)
        candidate, number = base / safe_component(name, "run name"), 1
        while candidate.exists():
            number += 1
            candidate = base / f"{name}-{number}"
        with writing(candidate):
            candidate.mkdir(parents=True)
        return cls(candidate)

    def remove_partial_writes(self) -> list[str]:
        """Temporary files a killed process left mid-write (the files they were to replace are intact)."""
        partial = [p for p in self.path.glob(".*.*") if p.is_file()]
        if self.writes:
            for path in partial:
                path.unlink(missing_ok=True)
        return [p.name for p in partial]

    def write_text(self, filename: str, text: str) -> Path:
        target = self.path / filename
        if self.writes:
            atomic_write(target, text.encode())
        return target

    def add_epoch(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        buffer = io.StringIO()
        # The task's own columns: a single-label run has no mAP column, a multi-label one no balanced accuracy.
        fields = [f for f in HISTORY_FIELDS if f == "stop" or any(f in row for row in self.history)]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        self.write_text(HISTORY_CSV, buffer.getvalue())
        self.write_history_json()

    def write_history_json(self) -> None:
        self.write_text(HISTORY_JSON, json.dumps(self.history + ([self.test] if self.test else []), indent=1))

    def set_test(self, record: dict[str, Any]) -> None:
        """Store the test-split score after the epochs: a record the epoch readers skip."""
        self.test = {"record": "test", **record}
        self.write_history_json()

    def save_checkpoint(self, filename: str, checkpoint) -> None:
        """Write a core.checkpoint.Checkpoint into the folder (atomically), on the process that writes."""
        if self.writes:
            checkpoint.save(self.path / filename)


# Fields every history row must hold as numbers for compare, report and resume to read it.
NUMERIC_HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's history.json, checked row by row: a damaged file is a one-line error naming it, not a traceback."""
    path = Path(run_dir) / HISTORY_JSON
    if not path.is_file():
        raise HeadstartError(f"{run_dir} is not a run folder: no history.json")
    return epoch_rows(read_records(path))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a history.json (epoch rows and the test record), checked: damaged files are one-line errors."""
    try:
        records = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
        raise HeadstartError(f"{path} is not valid JSON ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(records, list) or not all(isinstance(row, dict) for row in records):
        raise HeadstartError(f"{path} is not a run history: a list of epoch rows expected")
    for number, row in enumerate(epoch_rows(records), start=1):
        bad = [f for f in NUMERIC_HISTORY_FIELDS if not _is_number(row.get(f))]
        if bad or not isinstance(row.get("stage"), str):
            raise HeadstartError(
                f"{path}: row {number} lacks a number for '{(bad or ['stage'])[0]}' (a damaged history)"
            )
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch rows of a history.json, without the test record."""
    return [row for row in records if "record" not in row]


def find_test_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The test-split record of a history.json, or None (no test split, or an older run)."""
    return next((row for row in records if row.get("record") == "test"), None)


def read_test(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / HISTORY_JSON
    return find_test_record(read_records(path)) if path.is_file() else None


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A run folder means its best.pt; a file is taken as given."""
    path = user_path(run_or_checkpoint)
    if path.is_dir():
        path = path / BEST_FILE
    if not path.is_file():
        raise HeadstartError(f"no checkpoint at {path} (give a run folder with best.pt, or a .pt file)")
    return path
