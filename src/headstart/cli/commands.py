"""What each subcommand does with its parsed arguments: call the same function as the Python API, print the result."""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path
from typing import Any

from headstart.cli.flags import recipe_from_args
from headstart.config.defaults import default_recipe, is_data
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path
from headstart.core.runs import BEST_FILE


def without_devices(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--devices":
            skip = True
        elif not item.startswith("--devices="):
            kept.append(item)
    return kept


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from headstart.experiments.budget import train_planned as train

    if args.devices is not None and args.devices < 1:
        raise HeadstartError(f"--devices {args.devices}: give 1 or more processes")
    if args.devices and args.devices > 1 and "WORLD_SIZE" not in os.environ:
        from headstart.core.distributed import launch

        return launch(without_devices(args.argv), args.devices)
    if args.resume:
        if args.recipe or args.data:
            raise HeadstartError(
                "--resume continues a run with the recipe saved in its folder; give no DATA or --recipe with it"
            )
        train(resume=args.resume, quiet=args.quiet)
        return 0
    recipe = recipe_from_args(args)
    if args.dry_run:
        print(recipe.to_yaml(), end="")
        return 0
    train(recipe, quiet=args.quiet)
    return 0


def target_as_recipe_or_data(args: argparse.Namespace) -> None:
    """A command's positional TARGET is the data (a folder or CSV) or a recipe file; none means the built-in recipe."""
    args.recipe = args.data = None
    if args.target and is_data(args.target):
        args.data = args.target
    else:
        args.recipe = args.target


def cmd_sweep(args: argparse.Namespace) -> int:
    from headstart.experiments.sweep import is_sweep_file, parse_vary, read_sweep_file, sweep

    vary: dict[str, list[Any]] = {}
    variants: dict[str, dict[str, Any]] = {}
    seeds, name, base = args.seeds, args.name, None
    if args.target and not is_data(args.target) and is_sweep_file(args.target):
        args.recipe = args.data = None
        base, vary, variants, file_seeds, file_name = read_sweep_file(args.target)
        seeds, name = seeds or file_seeds, name or file_name
    else:
        target_as_recipe_or_data(args)
    args.name = None  # --name names the sweep folder here, not each run
    recipe = recipe_from_args(args, base)
    for spec in args.vary:
        key, values = parse_vary(spec)
        vary[key] = values
    if not vary and not variants:
        raise HeadstartError("nothing to sweep: give --vary KEY=V1,V2 (or a sweep file with vary: or variants:)")
    result = sweep(recipe, vary=vary, variants=variants, seeds=seeds or 1, out=args.out, name=name, quiet=args.quiet)
    print(result.comparison.markdown, end="")
    print(f"comparison: {result.comparison.files['md']}, {result.comparison.files['png']}")
    return 1 if result.failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from headstart.experiments.compare import compare

    comparison = compare(args.runs, out=args.out)
    print(comparison.markdown, end="")
    print(f"comparison: {comparison.files['md']}, {comparison.files['csv']}, {comparison.files['png']}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from headstart.training.lr_find import lr_find

    target_as_recipe_or_data(args)
    recipe = recipe_from_args(args)
    options = ("stage", "start_lr", "end_lr", "steps", "weights_from", "out", "quiet")
    found = lr_find(recipe, **{name: getattr(args, name) for name in options})
    if found.suggestion is None:
        print(f"{found.warning}; plot: {found.folder / 'lr_find.png'}")
        return 0
    print(
        f"suggested lr {found.suggestion:.3g} (steepest descent; minimum/10 is {found.minimum_tenth:.3g}); plot: {found.folder / 'lr_find.png'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from headstart.experiments.report import report

    print(report(args.target, out=args.out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from headstart.core.runs import resolve_checkpoint
    from headstart.deploy.ensemble import ensemble_members
    from headstart.deploy.hub import is_hub_folder
    from headstart.deploy.loading import load

    source = user_path(args.run)
    hub = is_hub_folder(source) and not (source / BEST_FILE).is_file()
    ensemble = ensemble_members(source) is not None  # train --budget's: its members' checkpoints, averaged
    source = source if source.is_file() or hub or ensemble else resolve_checkpoint(source)
    predictor = load(source, device=args.device, unknown=args.unknown)
    if args.explain:
        check_explainable(predictor, args.explain, mistakes=True)
    # The figures are printed before the picture is written: a read-only run folder loses only the picture.
    result = predictor.evaluate(args.data, confusion_png=None, tta=args.tta)
    # Named by what was scored (confusion-test-tta-flip.png), never a run's or a Hub folder's own file;
    # a Hub folder's files belong to its model card: an evaluation of one goes to the working directory.
    folder = Path.cwd() if hub else source if ensemble else source.parent
    png = Path(args.confusion) if args.confusion else folder / result.figure_name
    if args.json:
        print(json.dumps(result.to_json(), indent=1), flush=True)
    else:
        print(result.table(), flush=True)
    result.plot(png)
    if not args.json:
        print(f"{result.figure_kind}: {png}")
    if args.explain:
        from headstart.deploy.explain import explain_mistakes

        grid = explain_mistakes(predictor, result, user_path(args.explain))
        if not args.json:
            print(f"most confident mistakes: {grid}" if grid else "no mistakes to explain")
    return 0


def check_explainable(predictor, out: str, mistakes: bool = False) -> None:
    """--explain's one-line error before any work: a model without PyTorch layers, no grad-cam, no mistakes grid,
    or a file where the heatmaps' folder should be."""
    from headstart.deploy.explain import check_explainable as check

    if user_path(out).exists() and not user_path(out).is_dir():
        raise HeadstartError(f"--explain {out}: that is a file; give a folder for the heatmaps")
    check(predictor)
    if mistakes and predictor.task.name != "single-label":
        raise HeadstartError(
            "evaluate --explain draws a single-label model's most confident mistakes; for a multi-label model use predict --explain"
        )


def _expand_images(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = user_path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            paths.append(path)
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    from headstart.deploy.loading import load

    predictor = load(args.run, device=args.device, unknown=args.unknown)
    if args.explain:
        check_explainable(predictor, args.explain)
    paths = _expand_images(args.images)
    top_k = 3 if args.top_k is None else args.top_k
    probabilities, scores = predictor.outputs_of(paths, top_k=top_k, tta=args.tta)
    entries = predictor.entries([str(p) for p in paths], probabilities, top_k, scores)
    if args.csv:
        write_predictions_csv(Path(args.csv), entries, predictor.classes, probabilities.tolist())
        print(f"{len(paths)} predictions written to {args.csv}")
    elif args.json:
        print(json.dumps(entries, indent=1))
    else:
        for entry in entries:
            print(f"{entry['image']}  {entry_text(entry)}")
    if args.explain:
        written = predictor.explain(paths, args.explain, top_k=1 if args.top_k is None else args.top_k)
        if not args.json:
            # Grad-CAM explains one forward pass: the captions' probabilities are the image's own, not the TTA average.
            plain = " (each of the image as given: their captions' probabilities are without --tta)" if args.tta else ""
            print(f"{len(written)} heatmap(s) written to {args.explain}{plain}")
    return 0


def entry_text(entry: dict) -> str:
    """One image's answer as `predict` prints it: its top labels, or (multi-label) its tags."""
    from headstart.deploy.tags import entry_line

    if "labels" in entry:
        return entry_line(entry)
    flag = f"  UNKNOWN (score {entry['unknown_score']:.4g})" if entry.get("unknown") else ""
    return "  ".join(f"{t['label']} {t['probability']:.3f}" for t in entry["top"]) + flag


def write_predictions_csv(
    target: Path, entries: list[dict], classes: list[str], probabilities: list[list[float]]
) -> None:
    """Single-label: image,label,probability then label_2,probability_2 ... for the rest of the top k; unknown,
    unknown_score after them where the model has an unknown-image detector.

    Multi-label: image,labels (the tags given, space-separated),unknown, then one probability column per tag.
    """
    import csv
    import io

    from headstart.core.fileio import atomic_write

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if entries and "labels" in entries[0]:
        writer.writerow(["image", "labels", "unknown", *classes])
        for entry, row in zip(entries, probabilities):
            given = " ".join(t["label"] for t in entry["labels"])
            writer.writerow([entry["image"], given, entry["unknown"], *(f"{p:.6f}" for p in row)])
    else:
        k = max((len(entry["top"]) for entry in entries), default=1)
        marked = any("unknown" in entry for entry in entries)
        header = ["image", "label", "probability"] + [
            f"{field}_{i}" for i in range(2, k + 1) for field in ("label", "probability")
        ]
        writer.writerow(header + (["unknown", "unknown_score"] if marked else []))
        for entry in entries:
            row = [entry["image"]] + [v for t in entry["top"] for v in (t["label"], f"{t['probability']:.6f}")]
            flag = [str(entry["unknown"]).lower(), f"{entry['unknown_score']:.6g}"] if "unknown" in entry else ["", ""]
            writer.writerow(row + (flag if marked else []))
    atomic_write(target, buffer.getvalue().encode())


def cmd_export(args: argparse.Namespace) -> int:
    from headstart.deploy.export import export

    path = export(args.run, format=args.format, out=args.out, quantize=args.quantize)
    if args.format == "hub":
        print(f"{path} (model.safetensors, config.json, README.md)")
    else:
        print(f"{path} (preprocessing in {path.name}.json)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from headstart.deploy.push import push

    result = push(args.run, args.repo_id, private=args.private, dry_run=args.dry_run)
    for name, size in result.files:
        print(f"{size:>12,}  {name}")
    print(f"would upload to {result.url}" if args.dry_run else f"uploaded to {result.url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from headstart.deploy.server import serve

    serve(
        args.source,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        window_ms=args.window_ms,
        max_bytes=args.max_mb * (1 << 20),
        device=args.device,
        allowed_hosts=tuple(args.allowed_host) if args.allowed_host else None,
        read_seconds=args.timeout,
        dry_run=args.dry_run,
        unknown=args.unknown,
    )
    return 0


MAX_CLASSES = 100_000  # a head this wide on a 1280-channel backbone already holds 128 M parameters


def cmd_summary(args: argparse.Namespace) -> int:
    from headstart.core.checkpoint import load_checkpoint
    from headstart.data.layouts import list_images
    from headstart.experiments.sweep import is_sweep_file, read_sweep_file
    from headstart.model.build import build_model, resolve_preprocessing
    from headstart.model.freeze import plan_stages

    target = args.target
    if args.classes is not None and not 2 <= args.classes <= MAX_CLASSES:
        raise HeadstartError(f"--classes {args.classes}: give a count from 2 to {MAX_CLASSES:,}")
    if target is None or target == "default":
        recipe, classes = default_recipe(), args.classes
    elif is_sweep_file(target):  # a sweep's variants change fields of one base recipe: summarise that
        recipe, classes = read_sweep_file(target)[0], args.classes
    elif Path(target).suffix in (".yaml", ".yml"):
        recipe, classes = Recipe.from_yaml(target), args.classes
    else:
        checkpoint = load_checkpoint(target)
        recipe, classes = Recipe.from_dict(checkpoint.recipe), len(checkpoint.classes)
    if classes is None:
        try:
            classes = len(list_images(recipe.data).classes)
        except HeadstartError as err:
            raise HeadstartError(f"{err}; give --classes N to summarise without the data") from None
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    model = build_model(recipe.model.model_copy(update={"weights": "none"}), classes, preprocessing["image_size"])
    plans = plan_stages(model, recipe.stages)
    from headstart.model.layer_table import summarize

    print(
        f"{recipe.model.backbone}, {classes} classes, weights {recipe.model.weights or 'default'} (summary built without loading them)"
    )
    summarize(model, recipe.stages, plans, preprocessing["image_size"], print_fn=print)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    import timm

    from headstart.model.weights import installed_packaged_backbones

    pattern = args.pattern or "*"
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    packaged = set(installed_packaged_backbones())
    hub = {name.split(".")[0] for name in timm.list_models(pattern, pretrained=True)}
    names = [n for n in timm.list_models(pattern) if fnmatch.fnmatch(n, pattern)]
    if args.offline:
        names = [n for n in names if n in packaged or n == "headstart_cnn"]
    for name in names:
        marks = ["package (offline)"] if name in packaged else []
        if name in hub:
            marks.append("hub")
        if name == "headstart_cnn":
            marks.append("scratch")
        print(f"{name:<48}{', '.join(marks)}")
    if not names:
        raise HeadstartError(f"no backbone matches '{args.pattern}'")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from headstart.inspection.inspect_data import inspect

    options = ("backbone", "weights", "image_size", "batch_size", "device", "near_threshold", "label_margin", "quiet")
    inspect(args.data, args.out, **{name: getattr(args, name) for name in options})
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from headstart.labeling.suggest import suggest

    options = ("run", "out", "backbone", "batch_size", "device", "seed", "quiet")
    suggest(args.folder, args.budget, **{name: getattr(args, name) for name in options})  # its log line says where
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from headstart.experiments.probe import probe

    backbones = [name.strip() for name in args.backbones.split(",") if name.strip()] if args.backbones else None
    found = probe(args.data, backbones, seeds=args.seeds or 1, out=args.out, name=args.name, quiet=args.quiet)
    print(found.markdown, end="")
    print(f"probe: {found.folder / 'probe.md'}, {found.folder / 'probe.csv'}")
    return 0
