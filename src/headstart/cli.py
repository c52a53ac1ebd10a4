"""Command line: argument parsing only; every command calls the same functions as the Python API."""

from __future__ import annotations

import argparse
import errno
import fnmatch
import io
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError, Interrupted
from headstart.paths import user_path
from headstart.recipe import STAGE_FLAGS, Recipe, set_stage_field

log = logging.getLogger("headstart")


def builtin_recipe(name: str) -> Recipe:
    text = resources.files("headstart").joinpath(f"builtin/{name}.yaml").read_text()
    import yaml

    return Recipe.from_dict(yaml.safe_load(text), source=f"built-in recipe '{name}'")


def parse_adapter(spec: str) -> dict[str, Any]:
    """'noise' | 'noise:0.05' | 'resize:2x' | 'resize:96' | 'conv' | 'conv:5'."""
    kind, _, value = spec.partition(":")
    try:
        if kind == "noise":
            return {"kind": "noise", **({"sigma": float(value)} if value else {})}
        if kind == "resize" and value:
            return (
                {"kind": "resize", "factor": float(value[:-1])}
                if value.endswith("x")
                else {"kind": "resize", "size": int(value)}
            )
        if kind == "conv":
            return {"kind": "conv", **({"kernel_size": int(value)} if value else {})}
    except ValueError:
        pass  # 'resize:abcx', 'noise:abc', 'conv:x': the same one-line error as an unknown kind
    raise HeadstartError(
        f"--adapter '{spec}': valid forms are noise[:SIGMA], resize:FACTORx, resize:SIZE, conv[:KERNEL]"
    )


def recipe_from_args(args: argparse.Namespace, base: Recipe | None = None) -> Recipe:
    if base is not None:
        recipe = base
    elif args.recipe:
        recipe = Recipe.from_yaml(args.recipe)
    elif args.data is None:
        recipe = builtin_recipe("digits")
    else:
        recipe = Recipe()
    values = recipe.to_dict()
    data, model, run = values["data"], values["model"], values["run"]
    if args.data is not None:
        data["path"] = args.data
    for key in (
        "image_size",
        "augment",
        "batch_size",
        "val_fraction",
        "test_fraction",
        "balance",
        "workers",
        "feature_views",
    ):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    for key in ("backbone", "weights"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    if args.backbone is not None and args.weights is None:
        model["weights"] = None  # re-resolve the source for the new backbone
    if args.head is not None:
        model["head"]["kind"] = args.head
    if args.head_hidden is not None:
        model["head"]["hidden"] = args.head_hidden
    if args.head_dropout is not None:
        model["head"]["dropout"] = args.head_dropout
    if args.adapter:
        model["adapters"] = [parse_adapter(spec) for spec in args.adapter]
    for key, flag in (
        ("out_dir", "out"),
        ("name", "name"),
        ("seed", "seed"),
        ("device", "device"),
        ("precision", "precision"),
        ("monitor", "monitor"),
    ):
        if getattr(args, flag) is not None:
            run[key] = getattr(args, flag)
    if args.compile is not None:
        run["compile"] = args.compile
    if args.no_channels_last:
        run["channels_last"] = False
    if args.no_feature_cache:
        run["feature_cache"] = False
    if args.log:
        run["log"] = args.log
    recipe = Recipe.from_dict(values, source="command line")
    for field in STAGE_FLAGS:
        spec = getattr(args, field)
        if spec is not None:
            recipe = set_stage_field(recipe, field, spec)
    return recipe


# ----------------------------------------------------------------------------- commands


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

    from headstart.train import train

    if args.devices is not None and args.devices < 1:
        raise HeadstartError(f"--devices {args.devices}: give 1 or more processes")
    if args.devices and args.devices > 1 and "WORLD_SIZE" not in os.environ:
        from headstart.distributed import launch

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


def is_data(target: str) -> bool:
    return Path(target).is_dir() or Path(target).suffix.lower() == ".csv"


def target_as_recipe_or_data(args: argparse.Namespace) -> None:
    """A command's positional TARGET is the data (a folder or CSV) or a recipe file; none means the built-in recipe."""
    args.recipe = args.data = None
    if args.target and is_data(args.target):
        args.data = args.target
    else:
        args.recipe = args.target


def cmd_sweep(args: argparse.Namespace) -> int:
    from headstart.sweep import is_sweep_file, parse_vary, read_sweep_file, sweep

    vary, variants, seeds, name, base = {}, {}, args.seeds, args.name, None
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
    from headstart.compare import compare

    comparison = compare(args.runs, out=args.out)
    print(comparison.markdown, end="")
    print(f"comparison: {comparison.files['md']}, {comparison.files['csv']}, {comparison.files['png']}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from headstart.lr_find import lr_find

    target_as_recipe_or_data(args)
    recipe = recipe_from_args(args)
    found = lr_find(
        recipe,
        stage=args.stage,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        steps=args.steps,
        weights_from=args.weights_from,
        out=args.out,
        quiet=args.quiet,
    )
    print(
        f"suggested lr {found.suggestion:.3g} (steepest descent; minimum/10 is {found.minimum_tenth:.3g}); plot: {found.folder / 'lr_find.png'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from headstart.report import report

    print(report(args.target, out=args.out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from headstart.hub import is_hub_folder
    from headstart.inference import load
    from headstart.runs import resolve_checkpoint

    source = user_path(args.run)
    hub = is_hub_folder(source) and not (source / "best.pt").is_file()
    source = source if source.is_file() or hub else resolve_checkpoint(source)
    predictor = load(source, device=args.device)
    # A Hub folder's own confusion.png belongs to its model card: a new evaluation goes to the working directory.
    png = (
        Path(args.confusion) if args.confusion else (Path("confusion.png") if hub else source.parent / "confusion.png")
    )
    # The figures are printed before the picture is written: a read-only run folder loses only the picture.
    result = predictor.evaluate(args.data, confusion_png=None, tta=args.tta)
    if args.json:
        print(
            json.dumps(
                {
                    "accuracy": result.accuracy,
                    "accuracy_without_tta": result.plain_accuracy,
                    "count": result.count,
                    "per_class": result.per_class,
                    "confusion": result.confusion.tolist(),
                    "classes": result.classes,
                    "notes": result.notes,
                },
                indent=1,
            ),
            flush=True,
        )
    else:
        print(result.table(), flush=True)
    from headstart.plots import plot_confusion

    plot_confusion(result.confusion, result.classes, png, title=f"accuracy {result.accuracy:.3f}")
    if not args.json:
        print(f"confusion matrix: {png}")
    return 0


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
    from headstart.inference import load, prediction_entry

    predictor = load(args.run, device=args.device)
    paths = _expand_images(args.images)
    predictions = predictor.predict(paths, top_k=args.top_k, tta=args.tta)
    if args.csv:
        write_predictions_csv(Path(args.csv), paths, predictions)
        print(f"{len(paths)} predictions written to {args.csv}")
    elif args.json:
        print(
            json.dumps(
                [prediction_entry(str(p), top) for p, top in zip(paths, predictions)],
                indent=1,
            )
        )
    else:
        for path, top in zip(paths, predictions):
            print(f"{path}  " + "  ".join(f"{label} {prob:.3f}" for label, prob in top))
    return 0


def write_predictions_csv(target: Path, paths: list[Path], predictions: list[list[tuple[str, float]]]) -> None:
    """image,label,probability then label_2,probability_2 ... for the rest of the top k."""
    import csv
    import io

    from headstart.runs import atomic_write

    k = max((len(top) for top in predictions), default=1)
    header = ["image", "label", "probability"] + [
        f"{field}_{i}" for i in range(2, k + 1) for field in ("label", "probability")
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for path, top in zip(paths, predictions):
        writer.writerow([str(path)] + [value for label, prob in top for value in (label, f"{prob:.6f}")])
    atomic_write(target, buffer.getvalue().encode())


def cmd_export(args: argparse.Namespace) -> int:
    from headstart.export import export

    path = export(args.run, format=args.format, out=args.out, quantize=args.quantize)
    if args.format == "hub":
        print(f"{path} (model.safetensors, config.json, README.md)")
    else:
        print(f"{path} (preprocessing in {path.name}.json)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from headstart.push import push

    result = push(args.run, args.repo_id, private=args.private, dry_run=args.dry_run)
    for name, size in result.files:
        print(f"{size:>12,}  {name}")
    print(f"would upload to {result.url}" if args.dry_run else f"uploaded to {result.url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from headstart.server import serve

    serve(
        args.source,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        window_ms=args.window_ms,
        max_bytes=int(args.max_mb * (1 << 20)),
        device=args.device,
    )
    return 0


MAX_CLASSES = 100_000  # a head this wide on a 1280-channel backbone already holds 128 M parameters


def cmd_summary(args: argparse.Namespace) -> int:
    from headstart.data import list_images
    from headstart.freeze import plan_freeze
    from headstart.model import build_model, resolve_preprocessing
    from headstart.runs import load_checkpoint
    from headstart.sweep import is_sweep_file, read_sweep_file

    target = args.target
    if args.classes is not None and not 2 <= args.classes <= MAX_CLASSES:
        raise HeadstartError(f"--classes {args.classes}: give a count from 2 to {MAX_CLASSES:,}")
    if target is None or target == "default":
        recipe, classes = builtin_recipe("digits"), args.classes
    elif is_sweep_file(target):  # a sweep's variants change fields of one base recipe: summarise that
        recipe, classes = read_sweep_file(target)[0], args.classes
    elif Path(target).suffix in (".yaml", ".yml"):
        recipe, classes = Recipe.from_yaml(target), args.classes
    else:
        checkpoint = load_checkpoint(target)
        recipe, classes = Recipe.from_dict(checkpoint["recipe"]), len(checkpoint["classes"])
    if classes is None:
        try:
            classes = len(list_images(recipe.data).classes)
        except HeadstartError as err:
            raise HeadstartError(f"{err}; give --classes N to summarise without the data") from None
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    model = build_model(recipe.model.model_copy(update={"weights": "none"}), classes, preprocessing["image_size"])
    plans = [plan_freeze(model, stage.freeze, stage.bn) for stage in recipe.stages]
    from headstart.summary import summarize

    print(
        f"{recipe.model.backbone}, {classes} classes, weights {recipe.model.weights or 'default'} (summary built without loading them)"
    )
    summarize(model, recipe.stages, plans, preprocessing["image_size"], print_fn=print)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    import timm

    from headstart.weights import installed_packaged_backbones

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


# ----------------------------------------------------------------------------- parser


def cmd_inspect(args: argparse.Namespace) -> int:
    from headstart.inspection import inspect

    inspect(
        args.data,
        args.out,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        near_threshold=args.near_threshold,
        label_margin=args.label_margin,
        quiet=args.quiet,
    )
    return 0


def add_recipe_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Flags that override recipe fields (train and sweep); returns the 'run' group for command-specific flags."""
    group = parser.add_argument_group("model")
    group.add_argument("--backbone", help="any timm model name (see: headstart backbones)")
    group.add_argument("--weights", help="hub | package | none | file:PATH")
    group.add_argument("--head", choices=["linear", "gap-dense", "flatten-dense"])
    group.add_argument("--head-hidden", type=int)
    group.add_argument("--head-dropout", type=float)
    group.add_argument(
        "--adapter",
        action="append",
        help="noise[:SIGMA] | resize:FACTORx | resize:SIZE | conv[:KERNEL]; repeat to chain",
    )
    group = parser.add_argument_group("stages (VALUE for every stage, or NAME=VALUE,NAME=VALUE by stage name)")
    for field in STAGE_FLAGS:
        group.add_argument(f"--{field.replace('_', '-')}", dest=field)
    group = parser.add_argument_group("data")
    group.add_argument("--image-size", type=int)
    group.add_argument("--augment", choices=["none", "light", "standard"])
    group.add_argument("--batch-size", type=int)
    group.add_argument("--val-fraction", type=float)
    group.add_argument("--test-fraction", type=float, help="carve a test split from class folders (scored once)")
    group.add_argument(
        "--balance", choices=["none", "weights", "sampler"], help="class imbalance remedy (default: auto)"
    )
    group.add_argument("--workers", type=int)
    group.add_argument("--feature-views", type=int, help="augmented views to cache for head-only stages")
    group = parser.add_argument_group("run")
    group.add_argument("--out", help="parent folder of run folders (default runs/)")
    group.add_argument("--name", help="run (or sweep) folder name")
    group.add_argument("--seed", type=int)
    group.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    group.add_argument(
        "--monitor", choices=["val_loss", "val_acc", "val_balanced_acc", "val_f1"], help="what best.pt is chosen by"
    )
    group.add_argument(
        "--compile", choices=["auto", "on", "off"], help="torch.compile for stages that train the backbone"
    )
    group.add_argument("--no-channels-last", action="store_true")
    group.add_argument("--no-feature-cache", action="store_true")
    group.add_argument(
        "--log", action="append", choices=["tensorboard", "mlflow"], help="experiment tracker; repeat for both"
    )
    group.add_argument("--quiet", action="store_true")
    return group


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headstart", description="Fine-tune pretrained image classifiers on your own images."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a classifier (no DATA: the embedded digits default)")
    train.add_argument(
        "data", nargs="?", help="image folder (train/ [+ val/ + test/], or class folders) or CSV of path,label[,split]"
    )
    train.add_argument("--recipe", help="YAML recipe; flags override its fields")
    group = add_recipe_flags(train)
    group.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last finished epoch")
    group.add_argument(
        "--devices",
        type=int,
        help="data-parallel processes on this machine (one per GPU, or CPU processes), via torchrun",
    )
    group.add_argument("--dry-run", action="store_true", help="print the resolved recipe and stop")
    train.set_defaults(func=cmd_train)

    sweep = commands.add_parser(
        "sweep", help="run a recipe with switches changed, every combination and seed; then compare"
    )
    sweep.add_argument(
        "target", nargs="?", help="recipe YAML, sweep YAML (recipe + vary/variants + seeds), or data (folder or CSV)"
    )
    sweep.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="e.g. bn=frozen,train | finetune.lr=1e-3,1e-4 | model.head.dropout=0,0.5; repeat for a cross product",
    )
    sweep.add_argument("--seeds", help="how many seeds (3) or which (0,1,2); default 1")
    add_recipe_flags(sweep)
    sweep.set_defaults(func=cmd_sweep)

    compare = commands.add_parser("compare", help="table and overlaid curves of runs or a sweep, mean ± std over seeds")
    compare.add_argument("runs", nargs="+", help="run folders, or a sweep folder")
    compare.add_argument(
        "--out", help="folder for comparison.md/.csv/.png (default: the sweep folder, or the runs' parent)"
    )
    compare.set_defaults(func=cmd_compare)

    finder = commands.add_parser(
        "lr-find", help="learning-rate range test for one stage: loss vs LR plot and a suggestion"
    )
    finder.add_argument("target", nargs="?", help="recipe YAML or data (folder or CSV; none: the built-in recipe)")
    finder.add_argument("--stage", help="stage to test (default: the first)")
    finder.add_argument(
        "--from",
        dest="weights_from",
        metavar="RUN",
        help="start from this run's best weights (e.g. after the head stage)",
    )
    finder.add_argument("--start-lr", type=float, default=1e-7)
    finder.add_argument("--end-lr", type=float, default=10.0)
    finder.add_argument("--steps", type=int, default=100)
    add_recipe_flags(finder)
    finder.set_defaults(func=cmd_lr_find)

    report = commands.add_parser("report", help="one self-contained HTML page for a run or a sweep")
    report.add_argument("target", help="run folder or sweep folder")
    report.add_argument("--out", help="HTML file to write (default TARGET/report.html)")
    report.set_defaults(func=cmd_report)

    evaluate = commands.add_parser("evaluate", help="accuracy, per-class precision/recall, confusion matrix PNG")
    evaluate.add_argument(
        "run", help="run folder, checkpoint, exported model (.onnx / .pt2 / .torchscript) or Hub folder"
    )
    evaluate.add_argument("data", help="labelled folder (its val/ if present)")
    evaluate.add_argument("--confusion", help="where to write the confusion matrix PNG")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        choices=["flip", "crops"],
        help="test-time augmentation (flip, or ten crops); reports the accuracy with and without",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="top-k labels for images or folders of images")
    predict.add_argument(
        "run", help="run folder, checkpoint, exported model (.onnx / .pt2 / .torchscript) or Hub folder"
    )
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--csv", help="write image,label,probability,... rows to this file instead of printing")
    predict.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        choices=["flip", "crops"],
        help="test-time augmentation: flip (default) averages with the mirror image, crops over ten crops",
    )
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser(
        "export", help="write the run's best model as ONNX, torch.export, TorchScript or a Hub folder"
    )
    export.add_argument("run", help="run folder or checkpoint")
    export.add_argument("--format", choices=["onnx", "export", "torchscript", "hub"], default="onnx")
    export.add_argument(
        "--out", help="file (folder for hub) to write (default RUN/export/model.onnx, model.pt2, … or RUN/export/hub)"
    )
    export.add_argument(
        "--quantize", choices=["int8"], help="with --format onnx: also int8, calibrated on the validation images"
    )
    export.set_defaults(func=cmd_export)

    push = commands.add_parser("push", help="upload the run's Hub folder to the Hugging Face Hub")
    push.add_argument("run", help="run folder or checkpoint")
    push.add_argument("repo_id", help="OWNER/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", action="store_true", help="list what would go up and stop")
    push.set_defaults(func=cmd_push)

    serve = commands.add_parser("serve", help="HTTP prediction server (FastAPI + uvicorn) with a page at /")
    serve.add_argument("source", help="run folder, checkpoint, exported file or Hub folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=16, help="largest batch of requests run together (1: off)")
    serve.add_argument("--window-ms", type=float, default=5.0, help="how long a batch waits to fill")
    serve.add_argument("--max-mb", type=float, default=20.0, help="largest upload accepted, in MiB")
    serve.add_argument("--device", default="auto")
    serve.set_defaults(func=cmd_serve)

    summary = commands.add_parser("summary", help="layers, shapes, parameters and the trainable/frozen split per stage")
    summary.add_argument(
        "target", nargs="?", help="recipe YAML, run folder or checkpoint (default: the built-in recipe)"
    )
    summary.add_argument("--classes", type=int, help="number of classes, when the recipe's data is not at hand")
    summary.set_defaults(func=cmd_summary)

    backbones = commands.add_parser("backbones", help="timm backbone names, marked where weights are at hand")
    backbones.add_argument("pattern", nargs="?", help="e.g. 'efficientnet*' or 'resnet'")
    backbones.add_argument("--offline", action="store_true", help="only those with packaged weights")
    backbones.set_defaults(func=cmd_backbones)

    inspect = commands.add_parser(
        "inspect", help="find duplicates, leaks across splits, probable label errors and outliers; write clean.csv"
    )
    inspect.add_argument("data", nargs="?", help="image folder or CSV, any layout train takes (none: the digits)")
    inspect.add_argument("--out", help="folder for findings.csv, clean.csv, inspect.html (default runs/<data>-inspect)")
    inspect.add_argument("--backbone", default="tf_efficientnet_lite0", help="frozen backbone for the embeddings")
    inspect.add_argument("--weights", help="weight source (package | hub | file:PATH); default as for train")
    inspect.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    inspect.add_argument("--batch-size", type=int, default=64)
    inspect.add_argument("--device", default="auto")
    inspect.add_argument(
        "--near-threshold",
        type=float,
        help="cosine similarity for near duplicates (default: calibrated on generated copies)",
    )
    inspect.add_argument(
        "--label-margin",
        type=float,
        default=0.5,
        help="label suspects with p(suggested) - p(given) at or above this are left out of clean.csv",
    )
    inspect.add_argument("--quiet", action="store_true")
    inspect.set_defaults(func=cmd_inspect)
    return parser


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def interrupted_message(err: KeyboardInterrupt) -> str:
    """What Ctrl-C left: the run folder by name, and whether it can be resumed."""
    if not isinstance(err, Interrupted):
        return "interrupted"
    if err.resumable:
        return f"interrupted; every finished epoch is in {err.run_dir}: continue with headstart train --resume {err.run_dir}"
    return f"interrupted before the first epoch finished; {err.run_dir} holds no checkpoint: start the run again"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # The command line owns its process: progress lines go to stdout whatever logging was set up
    # before; the previous state comes back afterwards (main() may be called from Python).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    # File names that are not UTF-8 (a Latin-1 'café.png') reach Python as surrogates; a strict UTF-8
    # console (en_US.UTF-8) would raise on printing them. Written back as their original bytes, like ls.
    strict = [
        (s, s.errors) for s in (sys.stdout, sys.stderr) if isinstance(s, io.TextIOWrapper) and s.errors == "strict"
    ]
    for stream, _ in strict:
        stream.reconfigure(errors="surrogateescape")
    try:
        return args.func(args)
    except HeadstartError as err:
        # One line whatever the message quotes: a path holding a newline is shown escaped.
        print(f"headstart: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"headstart: {interrupted_message(err)}", file=sys.stderr)
        return 130
    except OSError as err:
        # A write this command has no guard for (a tracker's files, say) on a full or read-only disk.
        if err.errno not in WRITE_ERRNOS:
            raise
        from headstart.fileio import describe

        print(f"headstart: error: {one_line(describe(err, err.filename or 'a file'))}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for stream, errors in strict:
            stream.reconfigure(errors=errors)


if __name__ == "__main__":
    sys.exit(main())
