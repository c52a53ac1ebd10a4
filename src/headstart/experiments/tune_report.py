"""What a tune leaves beside its trials: best.yaml, tune.md, tune.json and tune.png; and the TuneResult it returns.

Which parameters mattered is Optuna's `get_param_importances` (fANOVA, seeded) over the complete
trials; with fewer than two, or when they cannot tell the parameters apart, the page says so instead.
The trials' run folders are compared too (comparison.md/.csv/.png in the tune folder), as a sweep's are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.config.search_space import space_to_dict, with_values
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.plots import plot_trials
from headstart.core.runs import BEST_RECIPE_FILE, TUNE_FILE, TUNE_JSON, TUNE_PLOT
from headstart.experiments.compare import compare
from headstart.experiments.tune_space import Search

log = logging.getLogger("headstart")

MIN_TRIALS_FOR_IMPORTANCE = 2


@dataclass
class TuneResult:
    path: Path  # the tune folder
    monitor: str
    direction: str  # 'minimize' or 'maximize'
    trials: list[dict[str, Any]]  # one per trial: number, state, value, epochs, params, run_dir
    best: dict[str, Any] | None  # the best complete trial's row; None while no trial completed
    best_recipe: Path | None  # best.yaml
    importances: dict[str, float] = field(default_factory=dict)  # parameter -> share of the variance it explains
    importance_note: str = ""
    markdown: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    return [
        {
            "number": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value if trial.value is None else float(trial.value),
            "epochs": len(trial.intermediate_values),
            "params": dict(trial.params),
            "run_dir": trial.user_attrs.get("run_dir"),
        }
        for trial in study.get_trials(deepcopy=False)
    ]


def importances(optuna: Any, study: Any) -> tuple[dict[str, float], str]:
    """(parameter -> importance, a line saying how they were found or why there are none)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, f"which parameters mattered needs 2 or more complete trials; {len(complete)} so far"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return {}, f"parameter importances could not be computed ({str(err).splitlines()[0]})"
    values = {key: float(value) for key, value in found.items()}
    if not values or any(value != value for value in values.values()):
        return {}, f"the {len(complete)} complete trials do not tell the parameters apart yet"
    note = f"fANOVA importance (Optuna's get_param_importances) over {len(complete)} complete trials"
    if len(complete) < 10:
        note += "; with fewer than 10 trials it is a rough guide"
    return values, note


def write_best(search: Search, best: dict[str, Any], path: Path) -> Path:
    """best.yaml: the base recipe with the best trial's values, which `headstart train --recipe` runs as it is."""
    recipe = with_values(search.base, best["params"], f"trial {best['number']}")
    header = (
        f"# headstart tune {search.folder.name}: trial {best['number']}, {search.monitor} {best['value']:.4f}\n"
        f"# headstart train --recipe {path}\n"
    )
    atomic_write(path, (header + recipe.to_yaml()).encode())
    return path


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def markdown(search: Search, where: str, rows: list[dict[str, Any]], result: TuneResult) -> str:
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail", "running")}
    seeding = "unseeded: a shared storage" if search.shared else f"seeded from run.seed {search.seed}"
    lines = [
        f"# headstart tune: {search.folder.name}",
        "",
        f"- study: {search.folder.name} in {where}; sampler TPE ({seeding}), pruner {search.pruner}",
        f"- monitor: {search.monitor} ({search.direction}); {counts['complete'] + counts['pruned']} trials finished "
        f"({counts['complete']} complete, {counts['pruned']} pruned), {counts['fail']} failed, {counts['running']} running",
    ]
    best = result.best
    if best is not None:
        run = Path(best["run_dir"] or "-")
        run = run.relative_to(search.folder) if run.is_relative_to(search.folder) else run  # another machine's
        lines.append(
            f"- best: trial {best['number']}, {search.monitor} {best['value']:.4f}; recipe {BEST_RECIPE_FILE}; run {run}"
        )
    else:
        lines.append("- best: no trial has completed yet")
    lines += ["", "## Which parameters mattered", "", result.importance_note, ""]
    lines += ["| parameter | importance | best trial's value | searched |", "|---|---|---|---|"]
    ranked = sorted(search.space, key=lambda p: -result.importances.get(p.key, -1.0))
    for param in ranked:
        share = result.importances.get(param.key)
        shown = "-" if share is None else f"{share:.3f}"
        chosen = _value(best["params"].get(param.key)) if best else "-"
        lines.append(f"| {param.key} | {shown} | {chosen} | {param.describe()} |")
    keys = [param.key for param in search.space]
    lines += ["", "## Trials", "", "| trial | state | " + search.monitor + " | epochs | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (4 + len(keys)))
    for row in rows:
        cells = [str(row["number"]), row["state"], _value(row["value"]), str(row["epochs"])]
        lines.append("| " + " | ".join(cells + [_value(row["params"].get(k)) for k in keys]) + " |")
    return "\n".join(lines) + "\n"


def compare_trials(folder: Path) -> None:
    """comparison.md/.csv/.png over the trials' run folders, as for a sweep (nothing to compare yet: skipped)."""
    try:
        compare([folder])
    except HeadstartError as err:
        log.info("tune %s: no comparison yet (%s)", folder.name, err)


def write_outputs(optuna: Any, study: Any, search: Search, where: str) -> TuneResult:
    """best.yaml, tune.md, tune.json, tune.png and the comparison, from the study as it stands."""
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    lower = search.direction == "minimize"
    best = (min if lower else max)(complete, key=lambda r: r["value"]) if complete else None
    folder = search.folder
    result = TuneResult(folder, search.monitor, search.direction, rows, best, None)
    if best is not None:
        result.best_recipe = write_best(search, best, folder / BEST_RECIPE_FILE)
    result.importances, result.importance_note = importances(optuna, study)
    result.markdown = markdown(search, where, rows, result)
    summary = {
        "study": folder.name,
        "storage": where,
        "monitor": search.monitor,
        "direction": search.direction,
        "pruner": search.pruner,
        "space": space_to_dict(search.space),
        "best": best,
        "best_recipe": BEST_RECIPE_FILE if best is not None else None,
        "importances": result.importances,
        "importance_note": result.importance_note,
        "trials": rows,
    }
    atomic_write(folder / TUNE_FILE, result.markdown.encode())
    atomic_write(folder / TUNE_JSON, (json.dumps(summary, indent=1, default=str) + "\n").encode())
    plot_trials(rows, folder / TUNE_PLOT, search.monitor, lower, title=f"{folder.name}: {len(rows)} trials")
    result.files = {"md": folder / TUNE_FILE, "json": folder / TUNE_JSON, "png": folder / TUNE_PLOT}
    compare_trials(folder)
    return result
