"""Calibrated probabilities: one temperature fitted on the validation split (Guo et al. 2017).

A network trained to a low loss is usually over-confident: its softmax says 0.99 where it is right
nine times in ten. Dividing the logits by one temperature T > 0, fitted to minimise the validation
negative log-likelihood, fixes most of that without changing a single prediction (the argmax is
the same). headstart fits T after training, stores it in best.pt ("temperature", with the
before/after figures in "calibration"), and every consumer divides by it: predict, evaluate,
serve and each export format.

A temperature is applied only where it helps on images it was not fitted on: K-fold
cross-validation on the val logits fits T on K-1 folds and scores the NLL of the held-out fold,
against T = 1 on the same fold. When the fitted temperatures do not lower that held-out NLL (an
already calibrated model, a small or noisy val split) T stays 1, best.pt holds no temperature,
and the summary line says why.

A multi-label model's tags share one temperature on their sigmoids, fitted on the mean binary
cross-entropy; its reliability bins hold (image, tag) forecasts against whether the tag is there.

Expected calibration error (ECE): the images sorted by the confidence of their top class and cut
into up to 15 bins of (near) equal counts, at least MIN_PER_BIN images each, so a small val
split does not leave bins of one or two images; the gap between each bin's mean confidence and
its accuracy, weighted by the bin's share of images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from headstart.tasks.registry import Task
from headstart.tasks.single_label import SINGLE_LABEL

BINS = 15
MIN_PER_BIN = 10  # fewer bins than BINS on a small split: each holds at least this many images
FOLDS = 5
MIN_IMAGES = 20  # below this a held-out fold holds too few images to tell whether a temperature helps
# Beyond these the fit is degenerate (all predictions right or all wrong on a tiny split): keep it bounded.
MIN_T, MAX_T = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, task: Task = SINGLE_LABEL) -> float:
    """The T > 0 minimising the task's NLL of logits / T (softmax or per-tag sigmoid): LBFGS on log T, in float64."""
    if len(labels) < 2 or logits.shape[1] < 2:
        return 1.0
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = task.nll(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().exp())
    return min(max(value, MIN_T), MAX_T) if value == value else 1.0  # NaN: no fit, no change


def reliability(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS, task: Task = SINGLE_LABEL
) -> dict[str, list[float]]:
    """Per confidence bin of (near) equal count: mean confidence, accuracy and count of its forecasts.

    A forecast is an image's top class (single-label) or one (image, tag) yes/no (multi-label).
    """
    confidence, correct = task.confidence_and_correct(probabilities, labels)
    order = torch.argsort(confidence, stable=True)
    groups = torch.tensor_split(order, max(1, min(bins, len(order) // MIN_PER_BIN))) if len(order) else []
    table: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for inside in groups:
        table["count"].append(len(inside))
        table["confidence"].append(float(confidence[inside].double().mean()))
        table["accuracy"].append(float(correct[inside].mean()))
    return table


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS, task: Task = SINGLE_LABEL
) -> float:
    table = reliability(probabilities, labels, bins, task)
    total = max(sum(table["count"]), 1)
    return sum(n / total * abs(c - a) for n, c, a in zip(table["count"], table["confidence"], table["accuracy"]))


@dataclass
class Calibration:
    temperature: float  # 1.0 when none is applied
    images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins_before: dict[str, list[float]] = field(default_factory=dict)
    bins_after: dict[str, list[float]] = field(default_factory=dict)
    applied: bool = True  # False: T kept at 1, for `reason`
    reason: str = ""
    fitted: float | None = None  # the temperature fitted on the whole split, applied or not
    cv_nll_plain: float | None = None  # mean held-out NLL at T = 1 and with the temperatures fitted on the other folds
    cv_nll_fitted: float | None = None
    folds: int = 0
    forecast: str = "top class"  # what one binned confidence is: an image's top class, or (multi-label) each tag

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def summary_line(self) -> str:
        if not self.applied:
            return (
                f"calibration: temperature kept at 1 (none applied): {self.reason}; "
                f"ECE {self.ece_before:.3f}, NLL {self.nll_before:.4f} on {self.images} val images"
            )
        checked = (
            f", held-out NLL {self.cv_nll_plain:.4f} -> {self.cv_nll_fitted:.4f} under {self.folds}-fold cross-validation"
            if self.cv_nll_plain is not None and self.cv_nll_fitted is not None
            else ""
        )
        return (
            f"calibration: temperature {self.temperature:.3f} fitted on {self.images} val images{checked}, "
            f"ECE {self.ece_before:.3f} -> {self.ece_after:.3f}, NLL {self.nll_before:.4f} -> {self.nll_after:.4f}"
        )


def cross_validate(
    logits: torch.Tensor, labels: torch.Tensor, folds: int = FOLDS, task: Task = SINGLE_LABEL
) -> tuple[float, float]:
    """Mean held-out NLL at T = 1 and with T fitted on the other folds (the images shuffled with a fixed seed)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    plain = fitted = 0.0
    for held in torch.tensor_split(order, folds):
        rest = order[~torch.isin(order, held)]
        temperature = fit_temperature(logits[rest], labels[rest], task)
        plain += float(task.nll(logits[held].double(), labels[held])) * len(held)
        fitted += float(task.nll(logits[held].double() / temperature, labels[held])) * len(held)
    return plain / len(labels), fitted / len(labels)


def calibrate(logits: torch.Tensor, labels: torch.Tensor, folds: int = FOLDS, task: Task = SINGLE_LABEL) -> Calibration:
    """Fit the temperature on (logits, labels) where cross-validation says it lowers held-out NLL; ECE and NLL before and after."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    fitted = fit_temperature(logits, labels, task)
    cv_plain = cv_fitted = None
    if len(labels) < max(MIN_IMAGES, 2 * folds):
        reason = f"{len(labels)} val images are too few to tell whether a temperature helps (at least {MIN_IMAGES})"
    else:
        cv_plain, cv_fitted = cross_validate(logits, labels, folds, task)
        reason = (
            ""
            if cv_fitted < cv_plain
            else f"a fitted temperature did not lower the held-out NLL under {folds}-fold cross-validation "
            f"({cv_plain:.4f} at T = 1, {cv_fitted:.4f} fitted; T on the whole split would be {fitted:.3f})"
        )
    temperature = fitted if not reason else 1.0
    before, after = task.probabilities(logits), task.probabilities(logits, temperature)
    return Calibration(
        temperature=temperature,
        images=len(labels),
        ece_before=expected_calibration_error(before, labels, task=task),
        ece_after=expected_calibration_error(after, labels, task=task),
        nll_before=float(task.nll(logits, labels)),
        nll_after=float(task.nll(logits / temperature, labels)),
        bins_before=reliability(before, labels, task=task),
        bins_after=reliability(after, labels, task=task),
        applied=not reason,
        reason=reason,
        fitted=fitted,
        cv_nll_plain=cv_plain,
        cv_nll_fitted=cv_fitted,
        folds=folds if cv_plain is not None else 0,
        forecast="top class" if task is SINGLE_LABEL else "each tag",
    )
