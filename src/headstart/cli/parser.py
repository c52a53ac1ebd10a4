"""Command line: argument parsing only; every command calls the same functions as the Python API."""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import sys
from typing import NoReturn

from headstart.cli import commands
from headstart.cli.flags import add_recipe_flags
from headstart.cli.search import add_cv, add_tune
from headstart.core.errors import HeadstartError, Interrupted
from headstart.deploy.formats import FORMATS, quantizations

log = logging.getLogger("headstart")


def add_train(sub) -> None:
    train = sub.add_parser("train", help="train a classifier (no DATA: the embedded digits default)")
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
    train.set_defaults(func=commands.cmd_train)


def add_sweep(sub) -> None:
    sweep = sub.add_parser("sweep", help="run a recipe with switches changed, every combination and seed; then compare")
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
    sweep.set_defaults(func=commands.cmd_sweep)


def add_compare(sub) -> None:
    compare = sub.add_parser("compare", help="table and overlaid curves of runs or a sweep, mean ± std over seeds")
    compare.add_argument("runs", nargs="+", help="run folders, or a sweep folder")
    compare.add_argument(
        "--out", help="folder for comparison.md/.csv/.png (default: the sweep folder, or comparison/ beside the runs)"
    )
    compare.set_defaults(func=commands.cmd_compare)


def add_lr_find(sub) -> None:
    finder = sub.add_parser("lr-find", help="learning-rate range test for one stage: loss vs LR plot and a suggestion")
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
    finder.set_defaults(func=commands.cmd_lr_find)


def add_report(sub) -> None:
    report = sub.add_parser("report", help="one self-contained HTML page for a run or a sweep")
    report.add_argument("target", help="run folder or sweep folder")
    report.add_argument("--out", help="HTML file to write (default TARGET/report.html)")
    report.set_defaults(func=commands.cmd_report)


def add_model_source(parser: argparse.ArgumentParser, tta_help: str) -> None:
    """The trained model to run (evaluate, predict), where, and test-time augmentation."""
    parser.add_argument(
        "run", help="run folder, checkpoint, exported model (.onnx / .pt2 / .torchscript / .tflite) or Hub folder"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tta", nargs="?", const="flip", choices=["flip", "crops"], help=tta_help)
    parser.add_argument(
        "--no-unknown",
        dest="unknown",
        action="store_false",
        help="do not mark images unlike every class as unknown (the run's detector is not applied)",
    )


def add_evaluate(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="accuracy, per-class precision/recall, confusion matrix PNG")
    add_model_source(evaluate, "test-time augmentation (flip, or ten crops); reports the accuracy with and without")
    evaluate.add_argument("data", help="labelled folder (its val/ if present)")
    evaluate.add_argument("--confusion", help="where to write the confusion matrix PNG")
    evaluate.add_argument(
        "--explain", metavar="DIR", help="write the most confident mistakes with their Grad-CAM heatmaps to DIR"
    )
    evaluate.set_defaults(func=commands.cmd_evaluate)


def add_predict(sub) -> None:
    predict = sub.add_parser("predict", help="top-k labels for images or folders of images")
    add_model_source(
        predict, "test-time augmentation: flip (default) averages with the mirror image, crops over ten crops"
    )
    predict.add_argument("images", nargs="+")
    predict.add_argument(
        "--top-k", type=int, help="labels per image (default 3); heatmaps: the predicted label's unless given"
    )
    predict.add_argument("--csv", help="write image,label,probability,... rows to this file instead of printing")
    predict.add_argument(
        "--explain", metavar="DIR", help="also write each image with its Grad-CAM heatmap per top-k label to DIR"
    )
    predict.set_defaults(func=commands.cmd_predict)


def add_export(sub) -> None:
    export = sub.add_parser(
        "export", help="write the run's best model as ONNX, torch.export, TorchScript, LiteRT, Core ML or a Hub folder"
    )
    export.add_argument("run", help="run folder or checkpoint")
    export.add_argument("--format", choices=list(FORMATS), default="onnx")
    export.add_argument(
        "--out",
        help="file (folder for hub) to write (default RUN/export/model.onnx, model.pt2, model.tflite, … or RUN/export/hub)",
    )
    export.add_argument(
        "--quantize", choices=quantizations(), help="with --format onnx: also int8, calibrated on the validation images"
    )
    export.set_defaults(func=commands.cmd_export)


def add_push(sub) -> None:
    push = sub.add_parser("push", help="upload the run's Hub folder to the Hugging Face Hub")
    push.add_argument("run", help="run folder or checkpoint")
    push.add_argument("repo_id", help="OWNER/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", action="store_true", help="list what would go up and stop")
    push.set_defaults(func=commands.cmd_push)


def add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="HTTP prediction server (FastAPI + uvicorn) with a page at /")
    serve.add_argument("source", help="run folder, checkpoint, exported file or Hub folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=16, help="largest batch of requests run together (1: off)")
    serve.add_argument("--window-ms", type=float, default=5.0, help="how long a batch waits to fill")
    serve.add_argument("--max-mb", type=float, default=20.0, help="largest upload accepted, in MiB")
    serve.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a client may take to send a request (slower: cut off)"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        help="a Host name to answer (repeat; default: loopback names on a loopback address, else any)",
    )
    serve.add_argument("--device", default="auto")
    serve.add_argument(
        "--no-unknown",
        dest="unknown",
        action="store_false",
        help="do not mark images unlike every class as unknown (the run's detector is not applied)",
    )
    serve.add_argument("--dry-run", action="store_true", help="check the settings, load the model, then exit")
    serve.set_defaults(func=commands.cmd_serve)


def add_summary(sub) -> None:
    summary = sub.add_parser("summary", help="layers, shapes, parameters and the trainable/frozen split per stage")
    summary.add_argument(
        "target", nargs="?", help="recipe YAML, run folder or checkpoint (default: the built-in recipe)"
    )
    summary.add_argument("--classes", type=int, help="number of classes, when the recipe's data is not at hand")
    summary.set_defaults(func=commands.cmd_summary)


def add_backbones(sub) -> None:
    backbones = sub.add_parser("backbones", help="timm backbone names, marked where weights are at hand")
    backbones.add_argument("pattern", nargs="?", help="e.g. 'efficientnet*' or 'resnet'")
    backbones.add_argument("--offline", action="store_true", help="only those with packaged weights")
    backbones.set_defaults(func=commands.cmd_backbones)


def add_inspect(sub) -> None:
    inspect = sub.add_parser(
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
        help="pixel match (aligned fine detail, 0-1) a near duplicate reaches (default 0.88)",
    )
    inspect.add_argument(
        "--label-margin",
        type=float,
        default=0.5,
        help="label suspects with p(suggested) - p(given) at or above this are left out of clean.csv",
    )
    inspect.add_argument("--quiet", action="store_true")
    inspect.set_defaults(func=commands.cmd_inspect)


def add_probe(sub) -> None:
    probe = sub.add_parser("probe", help="a cached head per candidate backbone: accuracy, time, inference img/s")
    probe.add_argument("data", help="image folder or CSV, any layout train takes")
    probe.add_argument("--backbones", help="A,B,... (default: the backbones with packaged weights)")
    probe.add_argument("--seeds", help="how many seeds (3) or which (0,1,2); default 1")
    probe.add_argument("--out", help="parent folder of the probe's sweep folder (default runs/)")
    probe.add_argument("--name", help="the probe's folder under --out (default: probe-DATA-<the candidates>)")
    probe.add_argument("--quiet", action="store_true")
    probe.set_defaults(func=commands.cmd_probe)


def add_suggest(sub) -> None:
    suggest = sub.add_parser("suggest", help="rank unlabelled images to label next; write to_label.csv and .html")
    suggest.add_argument(
        "folder", help="folder of unlabelled images (searched recursively) or a CSV with a path column"
    )
    suggest.add_argument("--budget", type=int, required=True, help="how many images to pick")
    suggest.add_argument("--run", help="a run (or model) to pick where it is least sure; none: typical images")
    suggest.add_argument("--out", help="folder for to_label.csv and to_label.html (default runs/<folder>-suggest)")
    suggest.add_argument(
        "--backbone", default="tf_efficientnet_lite0", help="backbone for the embeddings without --run"
    )
    suggest.add_argument("--batch-size", type=int, default=64)
    suggest.add_argument("--device", default="auto")
    suggest.add_argument("--seed", type=int, default=0, help="k-means' seed")
    suggest.add_argument("--quiet", action="store_true")
    suggest.set_defaults(func=commands.cmd_suggest)


class OneLineErrors(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (what is wrong, what is valid, where --help is), not the usage too.

    Subcommands' parsers are of the same class: add_subparsers makes them so.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="headstart", description="Fine-tune pretrained image classifiers on your own images.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_train,
        add_sweep,
        add_compare,
        add_lr_find,
        add_report,
        add_evaluate,
        add_predict,
        add_export,
        add_push,
        add_serve,
        add_summary,
        add_backbones,
        add_inspect,
        add_probe,
        add_suggest,
        add_tune,
        add_cv,
    ):
        add(sub)
    for command in [parser, *sub.choices.values()]:
        show_defaults(command)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """'(default: X)' on every option whose argparse default means something (recipe flags spell theirs)."""
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            continue
        action.help = f"{action.help} (default: %(default)s)" if action.help else "(default: %(default)s)"


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
    except BrokenPipeError:
        # The reader went away (`headstart predict … | head`): stop quietly, as other command-line tools do.
        quiet_stdout()
        return 1
    except OSError as err:
        # A write this command has no guard for (a tracker's files, say) on a full or read-only disk.
        if err.errno not in WRITE_ERRNOS:
            raise
        from headstart.core.fileio import describe_os_error

        print(f"headstart: error: {one_line(describe_os_error(err, err.filename or 'a file'))}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for stream, errors in strict:
            stream.reconfigure(errors=errors)


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so Python's flush at exit does not hit the closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test's captured stream)
        pass


if __name__ == "__main__":
    sys.exit(main())
