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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from headstart.config.recipe import DataConfig
from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.hardware import pick_hardware
from headstart.core.paths import user_path
from headstart.data.hf_source import hf_folder, is_hf_dataset
from headstart.data.holdout import held_out, overlap_note, same_source
from headstart.data.images import build_transforms, decode_all, open_image, short_side_for, to_rgb
from headstart.data.layouts import list_images
from headstart.data.splits import Sample, label_tensor, list_class_folders
from headstart.deploy.evaluation import Evaluation, evaluate_classes
from headstart.deploy.explain import Heatmap, heatmaps, write_explanations
from headstart.deploy.tags import TagEvaluation, evaluate_tags, given_tags, tag_entry
from headstart.deploy.tta import ten_crops, tta_mode
from headstart.deploy.unknown import (
    Prediction,
    detector_of,
    entry_fields,
    mark,
    scored_model,
    split_outputs,
    unknown_summary,
)
from headstart.tasks.multi_label import MULTI_LABEL
from headstart.tasks.registry import task_named
from headstart.tasks.single_label import SINGLE_LABEL
from headstart.tasks.tag_metrics import thresholds_or_default
from headstart.tasks.unknown import UnknownRule

log = logging.getLogger(__name__)


def prediction_entry(image: str, top: list[tuple[str, float]]) -> dict[str, Any]:
    """One image's entry in `predict --json` (and the server's answer): its name, its top labels, and unknown if known."""
    entry = {"image": image, "top": [{"label": label, "probability": round(prob, 6)} for label, prob in top]}
    return {**entry, **entry_fields(top)}


class Predictor:
    """A trained classifier with its own preprocessing: from a checkpoint (PyTorch) or an exported file (ONNX, TorchScript).

    tta (test-time augmentation): 'flip' averages each image's probabilities with its mirror
    image's; 'crops' over ten views (four corners and centre of the eval resize, each mirrored).
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
        classes: list[str],
        preprocessing: dict,
        to_input: Callable | None = None,
        temperature: float | None = None,
        recipe: dict[str, Any] | None = None,
        task: str | None = None,
        thresholds: list[float] | None = None,
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
        # What an output means: a class (softmax) or a tag (sigmoid, given at or above its threshold).
        self.task = task_named(task)
        self.thresholds = thresholds
        # The threshold on forward's score above which an image is "unknown"; None: nothing is flagged.
        self.unknown = unknown

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: str = "auto") -> Predictor:
        from headstart.model.build import model_from_checkpoint

        model, detector = model_from_checkpoint(checkpoint), detector_of(checkpoint)
        return cls.from_module(
            scored_model(model, detector),
            checkpoint.classes,
            checkpoint.preprocessing,
            device,
            checkpoint.temperature,
            checkpoint.recipe,
            checkpoint.task,
            checkpoint.thresholds,
            detector.rule if detector is not None else None,
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
        task: str | None = None,
        thresholds: list[float] | None = None,
        unknown: UnknownRule | None = None,
    ) -> Predictor:
        hw = pick_hardware(device, "fp32", channels_last=False)
        model.to(hw.device)
        return cls(model, classes, preprocessing, hw.to_input, temperature, recipe, task, thresholds, unknown)

    def to_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits, divided by the fitted temperature first when the model has one."""
        return self.task.probabilities(logits.float(), self.temperature)

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
        """Top-k (label, probability) for each image (paths or Pillow images), each marked `.unknown` (see Prediction).

        A multi-label model gives each image its tags instead: every (tag, probability) at or above
        the tag's threshold, most probable first; an empty list (`.unknown` true) is its "none of these".
        """
        probabilities, scores = self.outputs_of(images, top_k, tta)
        if self.task is MULTI_LABEL:
            limits = thresholds_or_default(self.thresholds, len(self.classes))
            tagged = [given_tags(row, self.classes, limits) for row in probabilities.numpy()]
            return [Prediction(tags, unknown=not tags) for tags in tagged]
        return self.top_labels(probabilities, top_k, scores)

    def outputs_of(
        self, images: Sequence[str | Path | Image.Image], top_k: int = 1, tta: str | bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, unknown-image scores or None) for images as paths or Pillow images (top_k checked here)."""
        self._check_top_k(top_k)
        probabilities, _, scores = self._scores([_open(image) for image in images], 32, tta_mode(tta), plain_too=False)
        return probabilities, scores

    def _check_top_k(self, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise HeadstartError(f"top-k {top_k!r}: give 1 or more (the model knows {len(self.classes)} classes)")

    def heatmaps(self, images: Sequence[str | Path | Image.Image], top_k: int = 1) -> list[list[Heatmap]]:
        """Per image, the Grad-CAM heatmap (deploy.explain.Heatmap) of each of its top-k labels, most probable first."""
        self._check_top_k(top_k)
        return heatmaps(self, [to_rgb(_open(image)) for image in images], top_k)

    def explain(self, images: Sequence[str | Path | Image.Image], out_dir: str | Path, top_k: int = 1) -> list[Path]:
        """One PNG per image in `out_dir` (named after it): the image under its heatmap for each of its top-k labels.

        Examples:
            >>> predictor.explain(["ant.jpg"], "heatmaps/", top_k=2)
            [PosixPath('heatmaps/ant.png')]
        """
        names = [f"image-{n}" if isinstance(image, Image.Image) else str(image) for n, image in enumerate(images)]
        return write_explanations(self.heatmaps(images, top_k), names, user_path(out_dir))

    def entries(
        self, names: list[str], probabilities: torch.Tensor, top_k: int, scores: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        """`predict --json` and the server's answers: per image its top labels and, where known, `unknown`
        (multi-label: its tags, unknown when none reaches its threshold)."""
        if self.task is MULTI_LABEL:
            limits = thresholds_or_default(self.thresholds, len(self.classes))
            return [tag_entry(n, row, self.classes, limits, top_k) for n, row in zip(names, probabilities.numpy())]
        return [prediction_entry(name, top) for name, top in zip(names, self.top_labels(probabilities, top_k, scores))]

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
    ) -> Evaluation | TagEvaluation:
        """Accuracy, per-class precision/recall and confusion matrix on DATA/val/<class>/ (or DATA/<class>/).

        A multi-label model is scored on a tags CSV (every row): mAP, micro-/macro-F1, exact match and
        the per-tag table at its thresholds (deploy.tags.TagEvaluation). For a run's checkpoint, DATA
        being the run's own data source means its held-out split is scored, and on another folder the
        files that are the run's training files are counted in a warning.
        """
        cfg = self._training_data()
        if cfg is not None and same_source(data, cfg):
            name, samples, note = held_out(cfg, self.classes)
            scored = f"the run's held-out {name} split"
            result = self.evaluate_samples(samples, confusion_png, tta, where=str(data), scored=scored, tag=name)
            result.notes.append(note)
            return result
        evaluate_other = self._evaluate_tags_csv if self.task is MULTI_LABEL else self._evaluate_folder
        result = evaluate_other(data, confusion_png, tta)
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

    def _evaluate_tags_csv(self, data: str | Path, confusion_png: Path | None, tta: str | bool | None):
        path = user_path(data)
        if path.suffix.lower() != ".csv":
            raise HeadstartError(
                f"{path}: a multi-label model is evaluated on a CSV of path,labels (or one 0/1 column per tag)"
            )
        split = list_images(DataConfig(path=str(path), task="multi-label"))
        index = {name: i for i, name in enumerate(self.classes)}
        samples: list[Sample] = []
        for image, label in split.train + split.val + split.test:
            names = [split.classes[k] for k in (label if isinstance(label, tuple) else (label,))]
            unknown = [name for name in names if name not in index]
            if unknown:
                raise HeadstartError(
                    f"{path} has tag '{unknown[0]}' the model does not know; its tags: {', '.join(self.classes)}"
                )
            samples.append((image, tuple(sorted(index[name] for name in names))))
        tag = "csv-" + (re.sub(r"[^A-Za-z0-9_.]+", "-", path.stem).strip("-.") or "data")
        return self.evaluate_samples(samples, confusion_png, tta, where=str(path), scored=f"CSV {path.name}", tag=tag)

    def _evaluate_folder(self, data: str | Path, confusion_png: Path | None, tta: str | bool | None):
        root = user_path(data)
        if is_hf_dataset(root):  # its images as split or class folders (data.hf_source), scored as a folder is
            root = hf_folder(root, DataConfig(path=str(root)))
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
        samples: Sequence[Sample],
        confusion_png: Path | None = None,
        tta: str | bool | None = None,
        where: str = "",
        scored: str = "",
        tag: str = "",
    ) -> Evaluation | TagEvaluation:
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
        paths = [path for path, _ in samples]
        if self.task is MULTI_LABEL:
            truth = label_tensor([label for _, label in samples], len(self.classes), MULTI_LABEL.name).numpy()
            result: Evaluation | TagEvaluation = evaluate_tags(
                probabilities.numpy(), truth, self.classes, self.thresholds
            )
        else:
            truth = np.array([label for _, label in samples])
            plain = float((SINGLE_LABEL.decide(without).numpy() == truth).mean()) if without is not None else None
            result = evaluate_classes(probabilities.numpy(), truth, self.classes, plain)
            result.unknown = unknown_summary(unknown, self.unknown)
            result.unknown_scores = None if unknown is None else unknown.numpy()
        result.tta, result.paths, result.scored, result.tag = mode, paths, scored or where, tag
        if confusion_png is not None:
            result.plot(confusion_png)
        return result


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
