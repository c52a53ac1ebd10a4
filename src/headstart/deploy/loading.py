"""headstart.load: a Predictor from whatever a run left: a run folder, a checkpoint, an exported file or a Hub folder."""

from __future__ import annotations

from pathlib import Path

from headstart.core.checkpoint import load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path
from headstart.core.runs import BEST_FILE
from headstart.deploy.ensemble import ensemble_members, ensemble_model, ensemble_rule, largest_input
from headstart.deploy.export import load_exported
from headstart.deploy.formats import model_suffixes, not_run_here
from headstart.deploy.hub import hub_rule, hub_task, hub_temperature, is_hub_folder, load_hub
from headstart.deploy.predictor import Predictor
from headstart.deploy.unknown import rule_from_description
from headstart.deploy.writing import sidecar_path


def load(source: str | Path, device: str = "auto", unknown: bool = True) -> Predictor:
    """A Predictor from a run folder (its best.pt, or its members' for an ensemble), a checkpoint, a file written by
    headstart export, or a Hub folder.

    unknown=False: predictions are not marked unknown even where the model has an unknown-image detector.
    """
    predictor = _load(user_path(source), device)
    if not unknown:
        predictor.unknown = None
    return predictor


def _load(path: Path, device: str) -> Predictor:
    elsewhere = not_run_here(path) if path.exists() else None
    if elsewhere is not None:
        raise HeadstartError(
            f"{path} (export --format {elsewhere.name}) cannot run here: {elsewhere.runs_on}; "
            "predict with the run folder or another export"
        )
    if is_hub_folder(path) and not (path / BEST_FILE).is_file():
        task, thresholds = hub_task(path)
        return Predictor.from_module(
            *load_hub(path),
            device=device,
            temperature=hub_temperature(path),
            task=task,
            thresholds=thresholds,
            unknown=hub_rule(path),
        )
    members = ensemble_members(path)
    if members is not None:  # train --budget's ensemble: the member runs' models, averaged
        rule = ensemble_rule(path)
        ensemble, checkpoints, _ = ensemble_model(members, scored=rule is not None)
        first = largest_input(checkpoints)
        # The members' recipe (they share data and splits): evaluate on the run's data scores its held-out split.
        return Predictor.from_module(
            ensemble,
            first.classes,
            first.preprocessing,
            device,
            recipe=first.recipe,
            task=first.task,
            unknown=rule if ensemble.thresholds is not None else None,
        )
    if path.is_file() and (path.suffix in model_suffixes() or sidecar_path(path).is_file()):
        forward, info = load_exported(path)
        temperature = None if info["temperature_applied"] else info["temperature"]  # never divided twice
        return Predictor(
            forward,
            info["classes"],
            info["preprocessing"],
            temperature=temperature,
            task=info["task"],
            thresholds=info["thresholds"],
            unknown=rule_from_description(info),
        )
    return Predictor.from_checkpoint(load_checkpoint(path), device=device)
