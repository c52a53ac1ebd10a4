"""Use a trained run: predict labels for images, evaluate on a labelled folder.

Example:
    >>> predictor = headstart.load("runs/hymenoptera-tf_efficientnet_lite0")
    >>> predictor.predict(["ant.jpg"], top_k=2)
    [[('ants', 0.97), ('bees', 0.03)]]
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from headstart.data import list_class_folders, build_transforms, decode_all, short_side_for, to_rgb
from headstart.errors import HeadstartError
from headstart.hardware import pick_hardware
from headstart.model import build_model
from headstart.recipe import Recipe
from headstart.report import plot_confusion
from headstart.runs import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    accuracy: float
    classes: list[str]
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    confusion: np.ndarray
    count: int

    def table(self) -> str:
        lines = [f"accuracy {self.accuracy:.4f} on {self.count} images", f"{'class':<20} precision  recall  f1      support"]
        for row in self.per_class:
            lines.append(f"{row['class']:<20} {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  {row['support']}")
        return "\n".join(lines)


class Predictor:
    """A trained classifier with its own preprocessing, rebuilt from a checkpoint (no weights downloaded)."""

    def __init__(self, checkpoint: dict[str, Any], device: str = "auto"):
        self.recipe = Recipe.from_dict(checkpoint["recipe"], source="checkpoint recipe")
        self.classes: list[str] = list(checkpoint["classes"])
        self.preprocessing = {k: tuple(v) if isinstance(v, list) else v for k, v in checkpoint["preprocessing"].items()}
        model_cfg = self.recipe.model.model_copy(update={"weights": "none"})
        self.model = build_model(model_cfg, len(self.classes), self.preprocessing["image_size"])
        self.model.load_state_dict(checkpoint["model"])
        self.hw = pick_hardware(device, "fp32", channels_last=False)
        self.model.to(self.hw.device).eval()
        _, self.transform = build_transforms(self.preprocessing, "none")

    @torch.no_grad()
    def probabilities(self, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.transform(to_rgb(image)) for image in images[start : start + batch_size]])
            outputs.append(self.model(self.hw.to_input(batch)).float().softmax(1).cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.classes))

    def predict(self, images: list[str | Path | Image.Image], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) for each image (paths or Pillow images)."""
        loaded = [_open(image) for image in images]
        probabilities = self.probabilities(loaded)
        k = min(top_k, len(self.classes))
        values, indices = probabilities.topk(k, dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values.tolist(), indices.tolist())]

    def evaluate(self, data: str | Path, confusion_png: Path | None = None) -> Evaluation:
        """Accuracy, per-class precision/recall and confusion matrix on DATA/val/<class>/ (or DATA/<class>/)."""
        root = Path(data).expanduser()
        folder = root / "val" if (root / "val").is_dir() else root
        found = list_class_folders(folder)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise HeadstartError(f"{folder} has class '{unknown[0]}' the model does not know; its classes: {', '.join(self.classes)}")
        samples = [(path, self.classes.index(name)) for name, paths in found.items() for path in paths]
        arrays, samples, bad = decode_all(samples, short_side_for(self.preprocessing), self.preprocessing["interpolation"], os.cpu_count() or 1)
        if bad:
            log.warning("skipped %d unreadable or non-image file(s): %s", len(bad), ", ".join(bad[:10]))
        if not samples:
            raise HeadstartError(f"no readable images in {folder}")
        probabilities = self.probabilities([Image.fromarray(a) for a in arrays])
        truth = np.array([label for _, label in samples])
        predicted = probabilities.argmax(1).numpy()
        labels = list(range(len(self.classes)))
        precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
        matrix = confusion_matrix(truth, predicted, labels=labels)
        if confusion_png is not None:
            plot_confusion(matrix, self.classes, confusion_png, title=f"accuracy {float((truth == predicted).mean()):.3f}")
        per_class = [
            {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(self.classes, precision, recall, f1, support)
        ]
        return Evaluation(float((truth == predicted).mean()), self.classes, per_class, matrix, len(samples))


def _open(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    path = Path(image).expanduser()
    if not path.is_file():
        raise HeadstartError(f"image not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, ValueError, SyntaxError) as err:
        raise HeadstartError(f"cannot read image {path}: {type(err).__name__}") from None


def load(run_or_checkpoint: str | Path, device: str = "auto") -> Predictor:
    """A Predictor from a run folder (its best.pt) or a checkpoint file."""
    return Predictor(load_checkpoint(run_or_checkpoint), device=device)
