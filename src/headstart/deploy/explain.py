"""Grad-CAM heatmaps: where in an image the model found its evidence for a label.

pytorch-grad-cam (the `explain` extra) hooks the output of the backbone's last stage, which timm's
`feature_info` names for every family, so no per-architecture table is kept here. Only a PyTorch
model has layers to hook: a run folder, a checkpoint or a Hub folder; an exported graph has not.

Example:
    >>> predictor = headstart.load("runs/hymenoptera-tf_efficientnet_lite0")
    >>> predictor.explain(["ant.jpg"], "heatmaps/", top_k=2)
    [PosixPath('heatmaps/ant.png')]
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.install import install_hint
from headstart.model.build import Classifier, WithScore

EXPLAINABLE = (
    "run folders, checkpoints and Hub folders can explain; exported .onnx, .pt2, .torchscript and .tflite files cannot"
)
CHUNK = 16  # images per Grad-CAM pass: each holds the activations and gradients of a whole batch
PANEL = 192  # a heatmap panel's side at least, in pixels (a 16-pixel input is drawn larger, not blurred)


@dataclass
class Heatmap:
    """One label's Grad-CAM map over one image, as the model saw it (resized and cropped)."""

    label: str
    probability: float
    heat: np.ndarray  # [S, S] in 0..1: how much each place raised the label's logit
    view: np.ndarray  # [S, S, 3] uint8: the image the model took

    def overlay(self) -> Image.Image:
        """The view with the heatmap laid over it (jet colours: red is strong evidence)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        return Image.fromarray(show_cam_on_image(self.view / 255.0, self.heat, use_rgb=True, image_weight=0.5))


def target_of(forward: Callable) -> tuple[nn.Module, nn.Module, int]:
    """(the module that returns logits, the backbone's last stage, its channel count), or the one-line refusal."""
    net = forward.classifier if isinstance(forward, WithScore) else forward
    # deploy.ensemble's MeanProbabilities, known by its members (importing it here would close an import cycle).
    if isinstance(getattr(net, "members", None), nn.ModuleList):
        raise HeadstartError(
            "an ensemble (train --budget) is explained one model at a time: give one of its RUN/members/<backbone> folders"
        )
    backbone = net.backbone if isinstance(net, Classifier) else net
    info = getattr(backbone, "feature_info", None) if isinstance(backbone, nn.Module) else None
    if not isinstance(info, list) or not info:  # a ScriptModule or an exported graph: no stages to hook
        raise HeadstartError(f"this model cannot be explained (Grad-CAM needs its PyTorch layers): {EXPLAINABLE}")
    assert isinstance(net, nn.Module) and isinstance(backbone, nn.Module)  # checked through feature_info above
    stage = info[-1]
    # A transformer's blocks share one reduction; a class-token head sees the last block's patch tokens only
    # through the class token (a zero gradient on them), so the last block's input is hooked: the one before's output.
    if len(info) > 1 and info[-2].get("reduction") == stage.get("reduction"):
        stage = info[-2]
    return net, backbone.get_submodule(stage["module"]), int(stage["num_chs"])


def as_map(channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Grad-CAM's reshape_transform: the last stage's output as an NCHW map whatever layout the family uses."""

    def reshape(activation: torch.Tensor) -> torch.Tensor:
        if activation.ndim == 3:  # transformer tokens [N, L, C]: class/register tokens lead, the rest is a square grid
            side = math.isqrt(activation.shape[1])
            return activation[:, -side * side :].unflatten(1, (side, side)).permute(0, 3, 1, 2)
        if activation.shape[1] != channels and activation.shape[-1] == channels:  # NHWC (Swin, say)
            return activation.permute(0, 3, 1, 2)
        return activation

    return reshape


def check_explainable(predictor) -> None:
    """The one-line error, before any work, when `predictor` (a Predictor) cannot be explained here."""
    target_of(predictor.forward)
    grad_cam()


def grad_cam():
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise HeadstartError(f"explanations need the grad-cam package: {install_hint('explain')}") from None
    return GradCAM, ClassifierOutputTarget


def heatmaps(
    predictor, images: Sequence[Image.Image], top_k: int = 1, labels: Sequence[int] | None = None
) -> list[list[Heatmap]]:
    """Per image, the Grad-CAM map of each of its top-k labels (most probable first), or of its one label in `labels`.

    `predictor` is a deploy.predictor.Predictor; `images` are 8-bit RGB Pillow images.
    """
    net, layer, channels = target_of(predictor.forward)
    GradCAM, Target = grad_cam()
    mean, std = (torch.tensor(predictor.preprocessing[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    found: list[list[Heatmap]] = []
    # The hooks live only inside this block: predictions made alongside (the server's) never run them.
    with GradCAM(model=net, target_layers=[layer], reshape_transform=as_map(channels)) as cam, torch.enable_grad():
        for start in range(0, len(images), CHUNK):
            batch = torch.stack([predictor.transform(image) for image in images[start : start + CHUNK]])
            probabilities = predictor.batch_probabilities(batch)
            if labels is None:
                indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1).indices
            else:
                indices = torch.tensor(labels[start : start + CHUNK]).unsqueeze(1)
            values = probabilities.gather(1, indices)
            views = ((batch * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            # The input's gradient keeps the graph alive when every weight is frozen (requires_grad False).
            inputs = predictor.to_input(batch).requires_grad_(True)
            maps = [
                cam(input_tensor=inputs, targets=[Target(int(i)) for i in indices[:, k]])
                for k in range(values.shape[1])
            ]
            for row, view in enumerate(views):
                found.append(
                    [
                        Heatmap(predictor.classes[int(indices[row, k])], float(values[row, k]), maps[k][row], view)
                        for k in range(values.shape[1])
                    ]
                )
    net.zero_grad(set_to_none=True)  # the served model keeps no gradients
    return found


def captioned(image: Image.Image, lines: list[str]) -> Image.Image:
    """`image` scaled to at least PANEL pixels a side, with text lines below it."""
    scale = max(1, math.ceil(PANEL / min(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    panel = Image.new("RGB", (image.width, image.height + 14 * len(lines) + 4), "white")
    panel.paste(image)
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=12)  # Pillow's own font (a bitmap one without FreeType): no system fonts
    for number, line in enumerate(lines):
        draw.text((3, image.height + 1 + 14 * number), line[:40], fill="black", font=font)
    return panel


def side_by_side(panels: list[Image.Image]) -> Image.Image:
    """Panels in a row (as many columns as given), on white."""
    width, height = sum(p.width for p in panels) + 4 * (len(panels) - 1), max(p.height for p in panels)
    strip, left = Image.new("RGB", (width, height), "white"), 0
    for panel in panels:
        strip.paste(panel, (left, 0))
        left += panel.width + 4
    return strip


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def label_strip(maps: list[Heatmap]) -> Image.Image:
    """One image's heatmaps, one panel per label, each captioned with the label and its probability."""
    return side_by_side([captioned(m.overlay(), [f"{m.label} {m.probability:.3f}"]) for m in maps])


def file_names(names: Sequence[str]) -> list[str]:
    """<stem>.png per image; a name taken already gets -2, -3, … (two folders' 001.jpg, or a.jpg, a.png and
    a-2.jpg, do not overwrite each other)."""
    taken: set[str] = set()
    found = []
    for name in names:
        stem = Path(name).stem or "image"
        chosen, number = f"{stem}.png", 1
        while chosen in taken:
            number += 1
            chosen = f"{stem}-{number}.png"
        taken.add(chosen)
        found.append(chosen)
    return found


def write_explanations(maps: list[list[Heatmap]], names: Sequence[str], out_dir: Path) -> list[Path]:
    """One PNG per image in `out_dir`: its heatmap for each label explained, side by side."""
    paths = [out_dir / name for name in file_names(names)]
    for path, image_maps in zip(paths, maps):
        atomic_write(path, png(label_strip(image_maps)))
    return paths


def mistakes_grid(mistakes: list[tuple[Path, str, str, float]], maps: list[Heatmap], path: Path, columns: int = 4):
    """evaluate's most confident mistakes as one PNG: each image with its heatmap for the wrong label it was given."""
    panels = [
        captioned(m.overlay(), [f"true: {true}", f"predicted: {guess} ({p:.2f})", image.name])
        for (image, true, guess, p), m in zip(mistakes, maps)
    ]
    rows = [side_by_side(panels[i : i + columns]) for i in range(0, len(panels), columns)]
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 4 for r in rows)), "white")
    top = 0
    for row in rows:
        grid.paste(row, (0, top))
        top += row.height + 4
    atomic_write(path, png(grid))
    return path


MISTAKES_SHOWN = 12


def explain_mistakes(predictor, evaluation, out_dir: Path) -> Path | None:
    """OUT_DIR/mistakes-<what was scored>.png: evaluate's most confident mistakes, each under its heatmap for the
    label it was wrongly given; None when there were no mistakes."""
    from headstart.data.images import open_image

    mistakes = evaluation.most_confident_mistakes(MISTAKES_SHOWN)
    if not mistakes:
        return None
    labels = [predictor.classes.index(guess) for _, _, guess, _ in mistakes]
    maps = heatmaps(predictor, [open_image(path) for path, _, _, _ in mistakes], labels=labels)
    return mistakes_grid(mistakes, [found[0] for found in maps], out_dir / f"mistakes-{evaluation.tag or 'data'}.png")
