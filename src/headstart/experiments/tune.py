"""Hyper-parameter search with Optuna: a TPE sampler over recipe fields, a pruner that stops bad trials early.

    headstart tune RECIPE_OR_DATA --trials 20 [--budget 1h] [--space space.yaml] [--storage URL]

Layout (runs/<name>-tune/, <name> from --name, else the data's):
    study.db            the Optuna study (SQLite); the same command again continues it: trials that
                        finished (complete or pruned) count toward --trials, an interrupted one failed
    space.yaml          what is searched: the default space read from the recipe (experiments.tune_space)
                        or --space's, in the form --space reads
    trial-0003/seed0/   each trial an ordinary run folder, listed in sweep.yaml, so compare and report
                        read the tune folder as they read a sweep
    best.yaml           the best trial's recipe: headstart train --recipe best.yaml
    tune.md/.json/.png  every trial, the best, and which parameters mattered (Optuna's get_param_importances)

Each trial reports the best monitored value so far after every epoch of its last stage; Optuna's
MedianPruner stops a trial whose value is worse than the median of the finished trials at the same
epoch of that stage (from its second epoch, once three trials have finished), leaving its run folder resumable. --budget is Optuna's
timeout: no trial starts after it, a running one finishes. --storage takes any Optuna RDB URL
(postgresql://, mysql://, sqlite:///shared/path.db): every machine that runs the same command against
it works on one study, Optuna's own distributed mode (docs/search.md).

Example:
    >>> result = headstart.tune("photos/", trials=20, budget="1h")
    >>> result.best_recipe  # runs/photos-tune/best.yaml
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import yaml

from headstart.config.defaults import as_recipe
from headstart.config.describe import flatten
from headstart.config.duration import format_duration, parse_duration
from headstart.config.recipe import Recipe
from headstart.config.search_space import (
    Param,
    as_field_types,
    check_space,
    read_space,
    space_from_dict,
    space_to_dict,
)
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.install import install_hint
from headstart.core.paths import user_path
from headstart.core.runs import ERROR_FILE, SPACE_FILE, STUDY_FILE, SWEEP_FILE
from headstart.data.layouts import list_images
from headstart.experiments.sweep import clear_unfinished, experiment_folder
from headstart.experiments.tune_report import TuneResult, write_outputs
from headstart.experiments.tune_space import Search, check_backbones, default_space, suggest
from headstart.tasks.metrics import LOWER_IS_BETTER, choose_monitor
from headstart.tasks.registry import task_named
from headstart.training.session import ensure_console
from headstart.training.train import train

log = logging.getLogger("headstart")

PRUNERS = ("median", "none")
PRUNE_AFTER_TRIALS = 3  # MedianPruner's n_startup_trials: finished trials before any trial is pruned
PRUNE_AFTER_EPOCHS = 2  # n_warmup_steps: a trial is judged from its second epoch (counted over all stages) on
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # a RUNNING trial silent for longer is failed (a machine that died)


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise HeadstartError(f"headstart tune needs Optuna: {install_hint('tune')}") from None
    # headstart logs each trial itself, and a failed trial's reason in one line (Optuna's own come with a traceback).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


class PruneOnEpoch:
    """train()'s on_epoch: report the best monitored value so far to the trial; stop the run when the pruner says.

    Only the last stage's epochs are reported, numbered within it: earlier stages end after a number
    of epochs that differs between trials (early stopping), so a trial's epoch 4 may be another's head
    stage and a third's fine-tuning, and comparing them pruned trials on noise (a reviewer's finding).
    """

    def __init__(self, trial: Any, monitor: str, last_stage: str):
        self.trial, self.monitor, self.last_stage = trial, monitor, last_stage
        self.best: float | None = None

    def __call__(self, step: int, row: dict[str, Any]) -> None:
        import optuna

        value = float(row[self.monitor])
        lower = self.monitor in LOWER_IS_BETTER
        if self.best is None or (value < self.best if lower else value > self.best):
            self.best = value
        if row["stage"] != self.last_stage:
            return
        step = int(row["epoch"])
        self.trial.report(self.best, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {step}: best {self.monitor} so far {self.best:.4f}")


def objective(search: Search, trial: Any) -> float:
    """One trial: sample the space, train the recipe in the trial's run folder, return best.pt's monitored score."""
    values = suggest(trial, search.space)
    number, run_dir = trial.number, search.run_dir(trial.number)
    recipe = search.recipe_for(values, number)
    trial.set_user_attr("run_dir", str(run_dir))
    search.register(number, values)
    if run_dir.exists():
        clear_unfinished(run_dir)  # a folder an earlier attempt at this number left without a finished epoch
    shown = ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items()
    )
    log.info("tune %s: trial %d: %s", search.folder.name, number, shown)
    try:
        result = train(recipe, quiet=search.quiet, on_epoch=PruneOnEpoch(trial, search.monitor, recipe.stages[-1].name))
    except HeadstartError as err:
        atomic_write(run_dir / ERROR_FILE, f"{err}\n".encode())  # compare lists the trial as failed, with why
        log.warning("tune %s: trial %d failed: %s", search.folder.name, number, err)
        raise
    except KeyboardInterrupt:
        atomic_write(run_dir / ERROR_FILE, b"interrupted (the study counts this trial as failed)\n")
        raise
    return float(result.best[search.monitor])


def redacted(url: str) -> str:
    """A storage URL without its password, for logs and tune.md."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: the error about it is raised where the study opens
        return url.split("@")[-1]


def make_pruner(optuna: Any, name: str) -> Any:
    """'median': Optuna's MedianPruner, judging from the second epoch once three trials finished; 'none': no pruning."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_AFTER_EPOCHS)
    return optuna.pruners.NopPruner()


def open_study(optuna: Any, search: Search, storage: Any) -> tuple[Any, str]:
    """The study named after the tune folder in `storage` (default: study.db in the folder), created or continued."""
    url = storage if storage is not None else f"sqlite:///{(search.folder / STUDY_FILE).resolve()}"
    shown = redacted(url) if isinstance(url, str) else type(url).__name__
    try:
        if storage is None:
            search.folder.mkdir(parents=True, exist_ok=True)  # for study.db; a --storage that fails leaves no folder
        if isinstance(url, str):
            # Heartbeats are marked experimental; they are how Optuna fails the trials of a worker that died.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                url = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
        study = optuna.create_study(
            storage=url,
            study_name=search.folder.name,
            direction=search.direction,
            pruner=make_pruner(optuna, search.pruner),
            load_if_exists=True,
        )
    except Exception as err:  # a URL sqlalchemy cannot parse, a driver not installed, a server that does not answer
        known = (ImportError, ValueError, RuntimeError, OSError)
        if isinstance(err, known) or type(err).__module__.startswith(("sqlalchemy", "optuna")):
            raise HeadstartError(f"--storage {shown}: cannot open the study ({str(err).splitlines()[0]})") from None
        raise
    check_same_search(study, search, shown)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(search.seed, study, storage is not None))
    return study, shown


def sampler_seed(seed: int, study: Any, shared: bool) -> int | None:
    """The TPE sampler's seed: the recipe's, moved on by the trials the study holds, so a continued study
    samples afresh instead of repeating its first trials; None (each process its own stream) for a shared
    storage, where workers starting together would otherwise try the same values."""
    return None if shared else seed + len(study.get_trials(deepcopy=False))


def check_same_search(study: Any, search: Search, where: str) -> None:
    """A study continued must search the same recipe and space; the first such study records what it searches."""
    mine = json.loads(json.dumps(search.fingerprint(), default=str))
    theirs = study.user_attrs.get("headstart")
    if theirs is None:
        if study.get_trials(deepcopy=False):
            raise HeadstartError(
                f"study '{study.study_name}' in {where} was not made by headstart tune; give another --name"
            )
        leftovers = sorted(p.name for p in search.folder.glob("trial-*"))
        if leftovers:
            raise HeadstartError(
                f"{search.folder} holds {leftovers[0]} of another study (its study.db is gone?); give another --name, or remove them"
            )
        study.set_user_attr("headstart", mine)
        return
    if theirs != mine:
        ours, stored = flatten(mine), flatten(theirs)
        differ = next((k for k in sorted(set(ours) | set(stored)) if ours.get(k) != stored.get(k)), "?")
        raise HeadstartError(
            f"study '{study.study_name}' in {where} searches another recipe or space ({differ}); "
            "give another --name, or the same recipe and space to continue it"
        )


def finished_trials(optuna: Any, study: Any) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def plan_search(
    recipe: Any, space: str | Path | dict | list[Param] | None, out: Any, name: str | None, pruner: str, quiet: bool
) -> Search:
    """The base recipe, its data's monitor, the checked space and the tune folder; one-line errors before any trial."""
    if pruner not in PRUNERS:
        raise HeadstartError(f"pruner {pruner!r}: valid: {', '.join(PRUNERS)}")
    base = as_recipe(recipe)
    split = list_images(base.data)  # the data must be there before the first trial
    monitor = choose_monitor(base.run.monitor, task_named(split.task))
    if space is None:
        params = default_space(base, split.task)
        where = "default search space"
    elif isinstance(space, list):
        params, where = space, "search space"
    elif isinstance(space, dict):
        params, where = space_from_dict(space), "search space"
    else:
        params, where = read_space(user_path(space)), str(space)
    params = as_field_types(params, base)
    check_space(params, base, where)
    check_backbones(params)
    return Search(base, params, monitor, experiment_folder(base, out, name, "tune"), pruner, quiet)


def tune(
    recipe: Recipe | str | Path | dict | None = None,
    *,
    trials: int,
    budget: str | float | None = None,
    space: str | Path | dict | list[Param] | None = None,
    storage: Any = None,
    pruner: str = "median",
    out: str | Path | None = None,
    name: str | None = None,
    quiet: bool = False,
) -> TuneResult:
    """Search `space` (default: read from the recipe) until the study holds `trials` finished trials or `budget` is spent.

    Args:
        recipe: a Recipe, dict, recipe YAML, or a data folder/CSV (its default recipe).
        trials: finished trials the study should hold; a continued study counts those it has.
        budget: wall-clock limit for this call ('90s', '10m', '1h', or seconds): Optuna's timeout.
        space: a space YAML file, a dict in that form, or Params (see headstart.config.search_space).
        storage: an Optuna storage URL or object shared by several machines (default: study.db in the folder).
    """
    optuna = require_optuna()
    ensure_console(quiet)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise HeadstartError(f"--trials {trials!r}: give a count of 1 or more")
    timeout = parse_duration(budget, "--budget") if budget is not None else None
    search = plan_search(recipe, space, out, name, pruner, quiet)
    search.shared = storage is not None
    study, where = open_study(optuna, search, storage)
    atomic_write(search.folder / SPACE_FILE, yaml.safe_dump(space_to_dict(search.space), sort_keys=False).encode())
    if (search.folder / SWEEP_FILE).is_file():
        search.variants = dict(yaml.safe_load((search.folder / SWEEP_FILE).read_text()).get("variants") or {})
    done = finished_trials(optuna, study)
    left = trials - done
    log.info(
        "tune %s: %d trial(s) finished of %d, %s (%s); study in %s",
        *(search.folder.name, done, trials, f"{left} to go" if left > 0 else "none to run", search.monitor, where),
    )
    if timeout is not None and left > 0:
        log.info("tune %s: no trial starts after %s", search.folder.name, format_duration(timeout))
    if left > 0:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        try:
            study.optimize(
                lambda trial: objective(search, trial),
                n_trials=left,
                timeout=timeout,
                catch=(HeadstartError,),
                callbacks=[optuna.study.MaxTrialsCallback(trials, states=states), trial_line(search)],
                gc_after_trial=True,
            )
        except KeyboardInterrupt:
            write_outputs(optuna, study, search, where)  # what finished is kept in best.yaml and tune.md
            log.warning("tune %s: interrupted; run the same command again to continue the study", search.folder.name)
            raise KeyboardInterrupt from None
    return write_outputs(optuna, study, search, where)


def trial_line(search: Search) -> Any:
    """Optuna callback: one log line per finished trial (Optuna's own are silenced)."""

    def after(study: Any, trial: Any) -> None:
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        state = trial.state.name.lower()
        log.info("tune %s: trial %d %s, %s %s", search.folder.name, trial.number, state, search.monitor, value)

    return after
