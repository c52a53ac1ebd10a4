"""The model card (`README.md`) of a Hub folder, made from the run: data, recipe, validation figures, how to load it.

Figures that need the data (class counts, per-class metrics, the confusion matrix) are measured
on the run's own split when its data is still at hand, and left out with a note when it is not.
Calibration appears only when the checkpoint carries a temperature.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from headstart.config.recipe import Recipe
from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.runs import CONFUSION_FILE, read_test
from headstart.data.splits import label_counts
from headstart.deploy.tags import TagEvaluation
from headstart.tasks.tag_metrics import thresholds_or_default


def local_name(value: str) -> str:
    """A local path as files meant for others write it: the last name only (`/home/alice/photos` -> `photos`)."""
    return Path(value.rstrip("/\\")).name or value


def shareable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as the model card and config.json carry it: the data folder, run folder and `file:` weights by name.

    An absolute path tells whoever downloads the model the trainer's user name and folder layout.
    """
    shared = json.loads(json.dumps(recipe))  # a deep copy, plain JSON types
    data, model, run = shared.get("data") or {}, shared.get("model") or {}, shared.get("run") or {}
    if data.get("path"):
        data["path"] = local_name(data["path"])
    if run.get("out_dir"):
        run["out_dir"] = local_name(run["out_dir"])
    if str(model.get("weights") or "").startswith("file:"):
        model["weights"] = "file:" + local_name(model["weights"].removeprefix("file:"))
    return shared


def data_section(
    recipe: Recipe, classes: list[str], model: nn.Module, checkpoint: Checkpoint, folder: Path
) -> list[str]:
    """Class counts per split and, on the validation split, per-class metrics and confusion.png."""
    from headstart.data.layouts import list_images
    from headstart.deploy.predictor import Predictor

    try:
        split = list_images(recipe.data)
    except HeadstartError:  # its message names the local path
        return ["The training data was not at hand at export time: counts and per-class figures omitted.", ""]
    if split.classes != classes:
        return ["The data folder's classes changed since training: counts and per-class figures omitted.", ""]
    splits = [("train", split.train), ("val", split.val)] + ([("test", split.test)] if split.test else [])
    # Images per class (multi-label: carrying the tag) in each split.
    counts = [label_counts([label for _, label in samples], len(classes)) for _, samples in splits]
    kind = "tag" if checkpoint.task == "multi-label" else "class"
    lines = [
        f"| {kind} | " + " | ".join(f"{name} images" for name, _ in splits) + " |",
        "|---" * (len(splits) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(c[k]) for c in counts) + " |" for k, name in enumerate(classes)]
    predictor = Predictor(
        model, classes, checkpoint.preprocessing, task=checkpoint.task, thresholds=checkpoint.thresholds
    )
    evaluation = predictor.evaluate_samples(split.val, where="the run's validation split")
    evaluation.plot(folder / CONFUSION_FILE)
    best = f"best checkpoint: stage `{checkpoint.stage}`, epoch {checkpoint.epoch}, val loss {checkpoint.val_loss:.4f}"
    if isinstance(evaluation, TagEvaluation):
        return lines + tag_validation_lines(evaluation, best)
    lines += [
        "",
        "## Validation",
        "",
        f"Accuracy **{evaluation.accuracy:.4f}** on the {evaluation.count} validation images ({best}).",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
        for r in evaluation.per_class
    ]
    return lines + ["", "![confusion matrix on the validation split](confusion.png)", ""]


def tag_validation_lines(evaluation: TagEvaluation, best: str) -> list[str]:
    """A multi-label model's validation scores and per-tag table (its thresholds were chosen on these images)."""
    scores = evaluation.scores
    lines = [
        "",
        "## Validation",
        "",
        f"Multi-label: mAP **{scores['map']:.4f}**, micro-F1 {scores['f1_micro']:.4f}, macro-F1 {scores['f1_macro']:.4f}, "
        f"exact match {scores['exact_match']:.4f} on the {evaluation.count} validation images ({best}); the per-tag "
        "thresholds were chosen on these images for F1.",
        "",
        "| tag | threshold | precision | recall | f1 | AP | support |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in evaluation.per_label:
        ap = "n/a" if r["average_precision"] is None else f"{r['average_precision']:.4f}"
        lines.append(
            f"| {r['label']} | {r['threshold']:.3f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {ap} | {r['support']} |"
        )
    return lines + ["", "![precision-recall per tag on the validation split](confusion.png)", ""]


def loading_section(layout: str, backbone: str) -> list[str]:
    if layout == "timm":
        return [
            "This is a plain timm classifier: timm alone rebuilds it (headstart is not needed).",
            "",
            "```python",
            "import timm",
            'model = timm.create_model("hf-hub:OWNER/REPO", pretrained=True).eval()  # or "local-dir:PATH"',
            "config = timm.data.resolve_data_config(model=model)",
            "transform = timm.data.create_transform(**config)",
            "labels = model.pretrained_cfg['label_names']",
            "```",
            "",
        ]
    return [
        f"This model is not a plain timm classifier: headstart's adapters or head around `{backbone}` compute something"
        f" timm's own `{backbone}` classifier does not (checked numerically at export), so `headstart.load` rebuilds it"
        " from the `headstart` block of `config.json`:",
        "",
        "```python",
        "import headstart",
        'predictor = headstart.load("PATH")  # the downloaded folder',
        'predictor.predict(["image.jpg"], top_k=3)',
        "```",
        "",
    ]


def scores_section(checkpoint: Checkpoint, checkpoint_path: Path) -> list[str]:
    """The test split's score (when the run had one) and the calibration (when the checkpoint has a temperature)."""
    lines = []
    test = read_test(checkpoint_path.parent)
    if test and checkpoint.task == "multi-label":
        lines += [
            "## Test",
            "",
            f"On the held-out test split ({test['images']} images, scored once after training with the val-chosen "
            f"thresholds): mAP **{test['map']:.4f}**, micro-F1 {test['f1_micro']:.4f}, macro-F1 {test['f1_macro']:.4f}, "
            f"exact match {test['exact_match']:.4f}, loss {test['loss']:.4f}.",
            "",
        ]
    elif test:  # scored once by train with the chosen model; nothing was chosen by it
        lines += [
            "## Test",
            "",
            f"On the held-out test split ({test['images']} images, scored once after training): accuracy "
            f"**{test['acc']:.4f}**, balanced accuracy {test['balanced_acc']:.4f}, macro-F1 {test['f1']:.4f}, "
            f"loss {test['loss']:.4f}.",
            "",
        ]
    if checkpoint.temperature is not None:
        activation = "softmax" if checkpoint.task == "single-label" else "per-tag sigmoid"
        found = checkpoint.calibration or {}
        ece = (
            f" Expected calibration error on the val split: {found['ece_before']:.3f} before, {found['ece_after']:.3f} after."
            if "ece_after" in found
            else ""
        )
        lines += [
            "## Calibration",
            "",
            f"Temperature scaling with T = {checkpoint.temperature:.4f}, already folded into the classifier's last "
            f"layer: the logits this model returns are divided by T, so its {activation} is calibrated as it is.{ece}",
            "",
        ]
    if checkpoint.unknown is not None:
        found = checkpoint.unknown
        lines += [
            "## Unknown images",
            "",
            f"`headstart.load` marks an image unknown (like none of the classes) when its {found['method']} score "
            f"on the penultimate features is above {found['threshold']:.4g}, which {found['val_rate']:.1%} of the "
            f"{found['val_images']} val images were; the detector is in `unknown.safetensors` (timm ignores it).",
            "",
        ]
    return lines


def task_line(checkpoint: Checkpoint) -> str:
    """What the outputs mean: one class per image, or any number of tags per image with their thresholds."""
    if checkpoint.task != "multi-label":
        return "Task: **single-label** classification (softmax over the classes: one class per image)."
    thresholds = thresholds_or_default(checkpoint.thresholds, len(checkpoint.classes))
    given = ", ".join(f"{c} {t:.3f}" for c, t in zip(checkpoint.classes, thresholds))
    return (
        "Task: **multi-label** tagging: one sigmoid per tag; an image carries every tag whose probability reaches "
        f"the tag's threshold (chosen on the validation split for F1: {given}), and none of them when no tag does."
    )


def write_card(folder: Path, checkpoint: Checkpoint, checkpoint_path: Path, layout: str, model: nn.Module) -> Path:
    """Write folder/README.md (and folder/confusion.png when the validation data is at hand)."""
    recipe = Recipe.from_dict(checkpoint.recipe, source="checkpoint recipe")
    classes = checkpoint.classes
    pre = checkpoint.preprocessing
    name = checkpoint_path.parent.name
    front = {
        "library_name": "timm" if layout == "timm" else "headstart",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "timm", "headstart"],
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# {name}",
        "",
        f"`{recipe.model.backbone}` fine-tuned with headstart on `{local_name(recipe.data.path or 'digits')}`:"
        f" {len(classes)} classes ({', '.join(classes)}).",
        "",
        task_line(checkpoint),
        "",
        "## Data",
        "",
        *data_section(recipe, classes, model, checkpoint, folder),
    ]
    lines += scores_section(checkpoint, checkpoint_path)
    lines += [
        "## Preprocessing",
        "",
        f"Resize the short side to `image_size / crop_pct`, centre-crop {pre['image_size']}×{pre['image_size']}, "
        f"normalise with the mean and std below ({pre['interpolation']} interpolation):",
        "",
        "```json",
        json.dumps(pre),
        "```",
        "",
        "## How to load it",
        "",
        *loading_section(layout, recipe.model.backbone),
        "## Training recipe",
        "",
        "```yaml",
        yaml.safe_dump(shareable_recipe(checkpoint.recipe), sort_keys=False).strip(),
        "```",
        "",
    ]
    target = folder / "README.md"
    target.write_text("\n".join(lines))
    return target
