"""Use a trained run: predict labels for images, evaluate on a labelled folder.

Example:
    >>> predictor = headstart.load("runs/hymenoptera-tf_efficientnet_lite0")
    >>> predictor.predict(["ant.jpg"], top_k=2)
    [[('ants', 0.97), ('bees', 0.03)]]
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from headstart.config.recipe import DataConfig
from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.hardware import pick_hardware
from headstart.core.paths import user_path
from headstart.core.plots import plot_confusion
from headstart.data.holdout import held_out, overlap_note, same_source
from headstart.data.images import build_transforms, decode_all, open_image, short_side_for, to_rgb
from headstart.data.splits import list_class_folders
from headstart.deploy.unknown import (
    Prediction,
    detector_of,
    entry_fields,
    mark,
    scored_model,
    split_outputs,
    unknown_line,
    unknown_summary,
)
from headstart.tasks.single_label import SINGLE_LABEL
from headstart.tasks.unknown import UnknownRule

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    accuracy: float
    classes: list[str]
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    confusion: np.ndarray
    count: int
    plain_accuracy: float | None = None  # without test-time augmentation, when it was used
    tta: str | None = None
    paths: list[Path] | None = None  # the images evaluated, in order
    probabilities: np.ndarray | None = None  # [images, classes]
    truth: np.ndarray | None = None  # true label index per image
    # Which images were scored, when that is not simply "all of DATA" (headstart.data.holdout), and warnings.
    notes: list[str] = field(default_factory=list)
    scored: str = ""  # what was scored, in words: "the run's held-out test split", "folder ants/val"
    tag: str = ""  # the same as a file name part: "test", "val", "folder-ants-val"
    unknown: dict[str, Any] | None = None  # flagged, rate, threshold, method, val_rate: with a detector

    @property
    def title(self) -> str:
        """A figure's title: what was scored, with or without TTA, and the accuracy."""
        tta = f"TTA ({self.tta})" if self.tta else "no TTA"
        return f"{self.scored or 'evaluation'}, {tta}\naccuracy {self.accuracy:.3f} on {self.count} images"

    @property
    def figure_name(self) -> str:
        """confusion-<what was scored>[-tta-<mode>].png: never a run's or a Hub folder's own file name."""
        return f"confusion-{self.tag or 'data'}" + (f"-tta-{self.tta}" if self.tta else "") + ".png"

    def most_confident_mistakes(self, count: int) -> list[tuple[Path, str, str, float]]:
        """(image, true label, predicted label, its probability) for the wrong predictions made with the most confidence."""
        probabilities, truth, paths = self.probabilities, self.truth, self.paths
        assert probabilities is not None and truth is not None and paths is not None  # evaluate_samples keeps them
        predicted = SINGLE_LABEL.decide(probabilities)
        wrong = [i for i in range(len(predicted)) if predicted[i] != truth[i]]
        wrong.sort(key=lambda i: -probabilities[i, predicted[i]])
        return [
            (
                paths[i],
                self.classes[truth[i]],
                self.classes[predicted[i]],
                float(probabilities[i, predicted[i]]),
            )
            for i in wrong[:count]
        ]

    def table(self) -> str:
        headline = f"accuracy {self.accuracy:.4f} on {self.count} images"
        if self.plain_accuracy is not None:
            headline += f" with TTA ({self.tta}); without: {self.plain_accuracy:.4f}, change {self.accuracy - self.plain_accuracy:+.4f}"
        unknown = [unknown_line(self.unknown, self.count)] if self.unknown else []
        lines = [*self.notes, headline, *unknown, f"{'class':<20} precision  recall  f1      support"]
        for row in self.per_class:
            lines.append(
                f"{row['class']:<20} {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  {row['support']}"
            )
        return "\n".join(lines)


TTA_MODES = ("flip", "crops")


def prediction_entry(image: str, top: list[tuple[str, float]]) -> dict[str, Any]:
    """One image's entry in `predict --json` (and the server's answer): its name, its top labels, and unknown if known."""
    entry = {"image": image, "top": [{"label": label, "probability": round(prob, 6)} for label, prob in top]}
    return {**entry, **entry_fields(top)}


def tta_mode(tta: str | bool | None) -> str | None:
    """None, 'flip' or 'crops' (True means 'flip')."""
    mode = "flip" if tta is True else (tta or None)
    if mode not in (None, *TTA_MODES):
        raise HeadstartError(f"unknown test-time augmentation '{tta}'; valid: {', '.join(TTA_MODES)}")
    return mode


def ten_crops(preprocessing: dict):
    """Image -> [10, 3, S, S]: the four corner crops and the centre crop of the eval resize, and their mirror images."""
    from torchvision import transforms

    interpolation = transforms.InterpolationMode(preprocessing["interpolation"])
    normalize = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(preprocessing["mean"], preprocessing["std"])]
    )
    return transforms.Compose(
        [
            transforms.Resize(short_side_for(preprocessing), interpolation=interpolation),
            transforms.TenCrop(preprocessing["image_size"]),
            transforms.Lambda(lambda crops: torch.stack([normalize(crop) for crop in crops])),
        ]
    )


class Predictor:
    """A trained classifier with its own preprocessing: from a checkpoint (PyTorch) or an exported file (ONNX, TorchScript).

    tta (test-time augmentation): 'flip' averages each image's probabilities with its mirror
    image's; 'crops' over ten views (four corners and centre of the eval resize, each mirrored).
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        classes: list[str],
        preprocessing: dict,
        to_input: Callable | None = None,
        temperature: float | None = None,
        recipe: dict[str, Any] | None = None,
        unknown: UnknownRule | None = None,
    ):
        # forward returns logits, or (logits, unknown-image score) for a model with a detector.
        self.forward = forward
        self.classes = list(classes)
        self.preprocessing: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()
        }
        self.to_input = to_input or (lambda batch: batch)
        # Fitted on the val split after training (headstart.tasks.calibration); None: probabilities as the logits give them.
        self.temperature = temperature
        _, self.transform = build_transforms(self.preprocessing, "none")
        # The training recipe (checkpoints only): evaluate keeps the run's training images out of its score.
        self.recipe = recipe
        # The threshold on forward's score above which an image is "unknown"; None: nothing is flagged.
        self.unknown = unknown

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: str = "auto") -> Predictor:
        from headstart.model.build import model_from_checkpoint

        model, detector = model_from_checkpoint(checkpoint), detector_of(checkpoint)
        return cls.from_module(
            scored_model(model, detector),
            *(checkpoint.classes, checkpoint.preprocessing, device, checkpoint.temperature, checkpoint.recipe),
            unknown=detector.rule if detector is not None else None,
        )

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        classes: list[str],
        preprocessing: dict,
        device: str = "auto",
        temperature: float | None = None,
        recipe: dict[str, Any] | None = None,
        unknown: UnknownRule | None = None,
    ) -> Predictor:
        hw = pick_hardware(device, "fp32", channels_last=False)
        model.to(hw.device)
        return cls(model, classes, preprocessing, hw.to_input, temperature, recipe, unknown)

    def to_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits, divided by the fitted temperature first when the model has one."""
        logits = logits.float()
        return SINGLE_LABEL.probabilities(logits, self.temperature)

    @torch.no_grad()
    def batch_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities for images already transformed with `self.transform` and stacked [N, 3, S, S]."""
        return self.batch_outputs(batch)[0]

    @torch.no_grad()
    def batch_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(class probabilities, unknown-image scores or None) for a transformed batch, from one pass."""
        logits, scores = split_outputs(self.forward(self.to_input(batch)))
        known = scores is not None and self.unknown is not None
        return self.to_probabilities(logits).cpu(), scores.float().cpu() if known else None  # type: ignore[union-attr]

    def probabilities(
        self, images: list[Image.Image], batch_size: int = 32, tta: str | bool | None = None
    ) -> torch.Tensor:
        """Class probabilities per image, averaged over the test-time augmentation's views if one is named."""
        return self._scores(images, batch_size, tta_mode(tta), plain_too=False)[0]

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        return split_outputs(self.forward(batch))[0]

    @torch.no_grad()
    def _scores(
        self, images: list[Image.Image], batch_size: int, mode: str | None, plain_too: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(probabilities with `mode`, without it when plain_too, unknown-image scores or None), in one pass.

        Flip TTA reuses the plain forward; the unknown score is always the plain image's, as its threshold was fitted.
        """
        crops = ten_crops(self.preprocessing) if mode == "crops" else None
        augmented, plain, unknown = [], [], []
        for start in range(0, len(images), batch_size):
            chunk = [to_rgb(image) for image in images[start : start + batch_size]]
            if mode != "crops" or plain_too or self.unknown is not None:
                batch = torch.stack([self.transform(image) for image in chunk])
                probabilities, scores = self.batch_outputs(batch)
                plain.append(probabilities)
                unknown += [] if scores is None else [scores]
                batch = self.to_input(batch)
            if mode == "flip":
                augmented.append((plain[-1] + self.to_probabilities(self._logits(batch.flip(3))).cpu()) / 2)
            elif crops is not None:
                views = torch.stack([crops(image) for image in chunk])  # [images, 10, 3, S, S]
                logits = self._logits(self.to_input(views.flatten(0, 1))).float()
                augmented.append(self.to_probabilities(logits).unflatten(0, views.shape[:2]).mean(1).cpu())
        empty = torch.empty(0, len(self.classes))
        plain_all = torch.cat(plain) if plain else empty
        unknown_all = torch.cat(unknown) if unknown else (torch.empty(0) if self.unknown and not images else None)
        if mode is None:
            return plain_all, None, unknown_all
        return (torch.cat(augmented) if augmented else empty), (plain_all if plain_too else None), unknown_all

    def predict(
        self, images: Sequence[str | Path | Image.Image], top_k: int = 3, tta: str | bool | None = None
    ) -> list[Prediction]:
        """Top-k (label, probability) for each image (paths or Pillow images), each marked `.unknown` (see Prediction)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise HeadstartError(f"top-k {top_k!r}: give 1 or more (the model knows {len(self.classes)} classes)")
        loaded = [_open(image) for image in images]
        probabilities, _, scores = self._scores(loaded, 32, tta_mode(tta), plain_too=False)
        return self.top_labels(probabilities, top_k, scores)

    def top_labels(
        self, probabilities: torch.Tensor, top_k: int, unknown_scores: torch.Tensor | None = None
    ) -> list[Prediction]:
        """The k most probable (label, probability) pairs of each row, flagged unknown where its score is above the threshold."""
        values, indices = probabilities.topk(min(top_k, len(self.classes)), dim=1)
        top = [
            [(self.classes[i], float(v)) for v, i in zip(row_v, row_i)]
            for row_v, row_i in zip(values.tolist(), indices.tolist())
        ]
        return mark(top, unknown_scores, self.unknown)

    def evaluate(
        self, data: str | Path, confusion_png: Path | None = None, tta: str | bool | None = None
    ) -> Evaluation:
        """Accuracy, per-class precision/recall and confusion matrix on DATA/val/<class>/ (or DATA/<class>/).

        For a run's checkpoint, DATA being the run's own data source means its held-out split is scored,
        and on another folder the files that are the run's training files are counted in a warning.
        """
        cfg = self._training_data()
        if cfg is not None and same_source(data, cfg):
            name, samples, note = held_out(cfg, self.classes)
            scored = f"the run's held-out {name} split"
            result = self.evaluate_samples(samples, confusion_png, tta, where=str(data), scored=scored, tag=name)
            result.notes.append(note)
            return result
        result = self._evaluate_folder(data, confusion_png, tta)
        assert result.paths is not None  # evaluate_samples keeps them
        warning = overlap_note(result.paths, cfg) if cfg is not None else None
        if warning:
            result.notes.append(f"warning: {warning}")
        return result

    def _training_data(self) -> DataConfig | None:
        try:
            return DataConfig.model_validate(self.recipe["data"]) if self.recipe else None
        except (ValueError, KeyError, TypeError):  # a checkpoint from an older recipe format: score as given
            return None

    def _evaluate_folder(self, data: str | Path, confusion_png: Path | None, tta: str | bool | None) -> Evaluation:
        root = user_path(data)
        folder = root / "val" if (root / "val").is_dir() else root
        found = list_class_folders(folder)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise HeadstartError(
                f"{folder} has class '{unknown[0]}' the model does not know; its classes: {', '.join(self.classes)}"
            )
        samples = [(path, self.classes.index(name)) for name, paths in found.items() for path in paths]
        short = f"{root.name}/val" if folder != root else root.name
        tag = "folder-" + (re.sub(r"[^A-Za-z0-9_.]+", "-", short).strip("-.") or "data")
        return self.evaluate_samples(samples, confusion_png, tta, where=str(folder), scored=f"folder {short}", tag=tag)

    def evaluate_samples(
        self,
        samples: list[tuple[Path, int]],
        confusion_png: Path | None = None,
        tta: str | bool | None = None,
        where: str = "",
        scored: str = "",
        tag: str = "",
    ) -> Evaluation:
        """The same figures for (path, label index) pairs: a run's own validation split, say.

        `where` names the samples in messages, `scored` in figure titles (default: `where`), `tag` in file names.
        """
        arrays, samples, bad = decode_all(
            samples, short_side_for(self.preprocessing), self.preprocessing["interpolation"], os.cpu_count() or 1
        )
        if bad:
            log.warning("skipped %d unreadable or non-image file(s): %s", len(bad), ", ".join(bad[:10]))
        if not samples:
            raise HeadstartError(f"no readable images in {where or 'the given samples'}")
        mode = tta_mode(tta)
        # With TTA the plain accuracy is measured too, so the change it makes is reported, not assumed.
        probabilities, without, unknown = self._scores(
            [Image.fromarray(a) for a in arrays], 32, mode, plain_too=mode is not None
        )
        truth = np.array([label for _, label in samples])
        predicted = SINGLE_LABEL.decide(probabilities).numpy()
        plain = float((SINGLE_LABEL.decide(without).numpy() == truth).mean()) if without is not None else None
        labels = list(range(len(self.classes)))
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, labels=labels, zero_division=0
        )
        matrix = confusion_matrix(truth, predicted, labels=labels)
        per_class = [
            {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(self.classes, precision, recall, f1, support)
        ]
        evaluation = Evaluation(
            float((truth == predicted).mean()),
            self.classes,
            per_class,
            matrix,
            len(samples),
            plain,
            mode,
            [path for path, _ in samples],
            probabilities.numpy(),
            truth,
            scored=scored or where,
            tag=tag,
            unknown=unknown_summary(unknown, self.unknown),
        )
        if confusion_png is not None:
            plot_confusion(matrix, self.classes, confusion_png, title=evaluation.title)
        return evaluation


def _open(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    path = user_path(image)
    if not path.exists():
        raise HeadstartError(f"image not found: {path}")
    if not path.is_file():  # a FIFO or device would block or never end
        raise HeadstartError(f"{path} is not a regular file; give image files or folders of them")
    try:
        return open_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise HeadstartError(f"cannot read image {path}: {str(err) or type(err).__name__}"[:300]) from None
