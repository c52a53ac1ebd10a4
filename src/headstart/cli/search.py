"""The search subcommands, parser and command side by side: tune (Optuna over recipe fields) and cv (k-fold)."""

from __future__ import annotations

import argparse

from headstart.cli.commands import target_as_recipe_or_data
from headstart.cli.flags import add_recipe_flags, recipe_from_args


def add_tune(sub) -> None:
    tune = sub.add_parser("tune", help="search recipe fields with Optuna (TPE, pruning); writes best.yaml")
    tune.add_argument("target", nargs="?", help="recipe YAML or data (folder or CSV; none: the built-in recipe)")
    tune.add_argument(
        "--trials",
        type=int,
        required=True,
        help="finished trials the study should hold (a continued one counts its own)",
    )
    # dest tune_budget: the study's limit, not run.budget (each trial's), which tune leaves out of its flags.
    tune.add_argument(
        "--budget", dest="tune_budget", metavar="TIME", help="wall-clock limit: 90s, 10m, 1h (no trial starts after it)"
    )
    tune.add_argument(
        "--space",
        metavar="FILE",
        help="YAML of recipe fields to search and their ranges (default: read from the recipe)",
    )
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage shared by every machine running this command (postgresql://..., default: TUNE/study.db)",
    )
    tune.add_argument("--pruner", choices=["median", "none"], default="median", help="stop bad trials early")
    add_recipe_flags(tune, exclude=("budget",))
    tune.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from headstart.experiments.tune import tune

    target_as_recipe_or_data(args)
    name, args.name = args.name, None  # --name names the tune folder (NAME-tune), not each trial
    recipe = recipe_from_args(args)
    options = {key: getattr(args, key) for key in ("trials", "space", "storage", "pruner", "quiet")}
    options["budget"] = args.tune_budget
    result = tune(recipe, name=name, **options)
    print(result.markdown, end="")
    if result.best_recipe is not None:
        print(f"best recipe: {result.best_recipe} (headstart train --recipe {result.best_recipe})")
    print(f"search: {result.files['md']}, {result.files['png']}; trials: headstart report {result.path}")
    return 0 if result.best is not None else 1


def add_cv(sub) -> None:
    from headstart.deploy.ensemble import ensemble_formats

    cv = sub.add_parser("cv", help="stratified k-fold cross-validation: every image validated once, mean ± std")
    cv.add_argument("data", nargs="?", help="image folder or CSV, any layout train takes (none: the embedded digits)")
    cv.add_argument("--folds", type=int, default=5, help="how many folds (at most the images of the smallest class)")
    cv.add_argument("--recipe", help="YAML recipe; flags override its fields (default: the default recipe for DATA)")
    cv.add_argument(
        "--ensemble",
        nargs="?",
        const="onnx",
        choices=ensemble_formats(),
        help="also write the fold models as one, averaging their calibrated probabilities (format; default onnx)",
    )
    add_recipe_flags(cv)
    cv.set_defaults(func=cmd_cv)


def cmd_cv(args: argparse.Namespace) -> int:
    from headstart.experiments.cv import cv

    name, args.name = args.name, None  # --name names the cv folder (NAME-cv), not each fold's run
    recipe = recipe_from_args(args)
    result = cv(recipe, folds=args.folds, name=name, ensemble=args.ensemble, quiet=args.quiet)
    print(result.markdown, end="")
    print(f"cv: {result.files['md']}, {result.files['json']}; folds side by side: headstart report {result.path}")
    return 1 if result.failed else 0
