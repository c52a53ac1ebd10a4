"""Hub folders: `model.safetensors` + `config.json` in timm's own Hub format + a `README.md` model card.

    headstart export RUN --format hub --out DIR

A plain timm classifier (no adapter that acts at inference, a linear head over the backbone's
average-pooled features) is written by timm's own `save_for_hf`, so
`timm.create_model("local-dir:DIR", pretrained=True)` rebuilds it with timm alone. Whether timm's
model computes the same function is checked numerically, not assumed from names: some families
(ConvNeXt, MobileNetV3, ViT) do more in timm's head than headstart's linear head does. Any other
model is written as headstart's own state dict with the same `config.json` fields, plus a
`headstart` block with the model recipe that `headstart.load(DIR)` rebuilds it from.

Example:
    >>> folder = headstart.export("runs/hymenoptera-tf_efficientnet_lite0", format="hub", out="hub/")
    >>> timm.create_model(f"local-dir:{folder}", pretrained=True)  # when the card says timm loads it
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from headstart.config.recipe import ModelConfig, NoiseAdapter, Recipe
from headstart.core.checkpoint import Checkpoint, load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import default_permissions, writing
from headstart.core.runs import resolve_checkpoint
from headstart.deploy.card import shareable_recipe
from headstart.deploy.hubconfig import HUB_FORMAT, check_classifier, headstart_model, read_hub_config, weight_shapes
from headstart.deploy.unknown import detector_of, hub_scored, write_hub_detector
from headstart.model.build import Classifier, build_model
from headstart.tasks.unknown import UnknownRule

log = logging.getLogger(__name__)


def is_hub_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def timm_equivalent(model: Classifier, cfg: ModelConfig, num_classes: int, size: int) -> nn.Module | None:
    """The same classifier as a stock timm model with its own classifier, or None when timm's differs."""
    # The noise adapter is the identity at inference; any other adapter is computation timm does not have.
    if cfg.backbone == "headstart_cnn" or cfg.head.kind != "linear":
        return None
    if not all(isinstance(spec, NoiseAdapter) for spec in cfg.adapters):
        return None
    try:
        net = timm.create_model(
            cfg.backbone, pretrained=False, num_classes=num_classes, global_pool="avg", **cfg.backbone_args
        )
    except (TypeError, ValueError, RuntimeError, AssertionError):
        return None
    classifier = net.get_classifier()  # type: ignore[operator]  # timm's own method
    if not isinstance(classifier, nn.Linear):
        return None
    name = next(n for n, m in net.named_modules() if m is classifier)
    head = model.head[-1]
    state = {**model.backbone.state_dict(), f"{name}.weight": head.weight, f"{name}.bias": head.bias}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        return None
    net.eval()
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(net(probe), model(probe), atol=1e-5, rtol=1e-4)
    return net if same else None


def timm_data_config(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """headstart's preprocessing as timm's data config (what `resolve_data_config` gives back)."""
    size = preprocessing["image_size"]
    return {
        "input_size": (3, size, size),
        "mean": tuple(preprocessing["mean"]),
        "std": tuple(preprocessing["std"]),
        "interpolation": preprocessing["interpolation"],
        "crop_pct": preprocessing["crop_pct"],
        "crop_mode": "center",
    }


def headstart_block(checkpoint: Checkpoint, layout: str) -> dict[str, Any]:
    block = {
        "format": HUB_FORMAT,
        "layout": layout,
        "model": shareable_recipe(checkpoint.recipe)["model"],  # a `file:` weights path by its name only
        "classes": checkpoint.classes,
        "preprocessing": checkpoint.preprocessing,
    }
    if checkpoint.temperature is not None:  # calibration, folded into the classifier's weights (export_hub)
        block.update(temperature=checkpoint.temperature, temperature_applied=True)
    if checkpoint.task != "single-label":  # sigmoid outputs and the per-tag thresholds chosen on val
        block.update(task=checkpoint.task, thresholds=checkpoint.thresholds)
    detector = detector_of(checkpoint)
    return block if detector is None else {**block, "unknown": detector.rule.fields()}


def write_headstart_layout(model: Classifier, checkpoint: Checkpoint, folder: Path) -> None:
    """headstart's state dict, and a config.json with timm's fields so Hub pages and tools still read it."""
    classes = checkpoint.classes
    data = timm_data_config(checkpoint.preprocessing)
    config = {
        "architecture": checkpoint.recipe["model"]["backbone"],
        "num_classes": len(classes),
        "label_names": classes,
        "pretrained_cfg": {**data, "num_classes": len(classes)},
        "headstart": headstart_block(checkpoint, "headstart"),
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def export_hub(run_or_checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Write the Hub folder (weights, config, model card); returns the folder."""
    from headstart.model.build import fold_temperature, model_from_checkpoint

    checkpoint_path = resolve_checkpoint(run_or_checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    if checkpoint.temperature is not None:  # timm alone then gives headstart's calibrated probabilities
        fold_temperature(model, checkpoint.temperature)
    cfg = Recipe.from_dict(checkpoint.recipe, source="checkpoint recipe").model
    classes = checkpoint.classes
    target = Path(out).expanduser() if out else checkpoint_path.parent / "export" / "hub"
    if target.exists() and not (target.is_dir() and (is_hub_folder(target) or not any(target.iterdir()))):
        raise HeadstartError(f"{target} exists and is not an empty folder or a hub export; give another --out")
    with writing(target):
        net = timm_equivalent(model, cfg, len(classes), checkpoint.preprocessing["image_size"])
        write_folder(target, net, model, checkpoint, checkpoint_path)
    log.info("exported %s for the Hub (%s loads it)", target, "timm" if net is not None else "headstart")
    return target


def write_folder(
    target: Path, net: nn.Module | None, model: Classifier, checkpoint: Checkpoint, checkpoint_path: Path
) -> None:
    """Built in a temporary sibling and swapped in, so a failed export never leaves half a folder."""
    from headstart.deploy.card import write_card

    classes = checkpoint.classes
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if net is not None:
            timm.models.save_for_hf(
                net,
                str(staging),
                model_config={"label_names": classes, "headstart": headstart_block(checkpoint, "timm")},
                safe_serialization=True,
                data_config=timm_data_config(checkpoint.preprocessing),
            )
        else:
            write_headstart_layout(model, checkpoint, staging)
        detector = detector_of(checkpoint)
        if detector is not None:  # beside timm's weights file, which timm would refuse with extra tensors in it
            write_hub_detector(staging, detector)
        write_card(staging, checkpoint, checkpoint_path, "timm" if net is not None else "headstart", model)
        default_permissions(staging)  # a folder to share: readable by others as the umask allows, not 0700 / 0600
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def hub_temperature(folder: Path) -> float | None:
    """The temperature the loader must still divide by: None for other timm folders, uncalibrated runs, and folders
    whose weights already have it folded in (every folder written since the temperature was folded)."""
    block = read_hub_config(folder).headstart
    return None if block is None or block.temperature_applied else block.temperature


def hub_task(folder: Path) -> tuple[str | None, list[float] | None]:
    """What the outputs mean (task) and a multi-label model's thresholds; (None, None) for other timm folders."""
    block = read_hub_config(folder).headstart
    return (None, None) if block is None else (block.task, block.thresholds)


def hub_rule(folder: Path) -> UnknownRule | None:
    """The unknown-image threshold of a headstart Hub folder (None for other timm folders and folders without one)."""
    block = read_hub_config(folder).headstart
    return None if block is None or block.unknown is None else block.unknown.rule()


def load_hub(folder: Path) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """(model in eval mode, classes, preprocessing) for a Hub folder: headstart's own or any timm one.

    With an unknown-image detector the model returns (logits, score) (headstart.deploy.unknown).

    config.json and the weights' header are checked before anything is built (headstart.hubconfig).
    """
    config = read_hub_config(folder)
    check_classifier(folder, config, weight_shapes(folder))
    layout = config.headstart.layout if config.headstart is not None else "timm"
    cfg = headstart_model(folder, config) if layout == "headstart" else None
    # One place for whatever building and loading raise: the checks above leave only a damaged or odd file.
    model: nn.Module  # a headstart Classifier or a plain timm model
    try:
        if cfg is not None:
            model = build_model(cfg, config.num_classes, config.preprocessing["image_size"])
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        else:
            model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except HeadstartError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever timm or torch raise on weights that passed the checks
        why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise HeadstartError(
            f"cannot load the Hub folder {folder}: the weights do not fit config.json ({why})"
        ) from None
    return hub_scored(folder, model.eval(), config.headstart), config.labels, config.preprocessing
