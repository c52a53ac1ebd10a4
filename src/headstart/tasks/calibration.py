"""Calibrated probabilities: one temperature fitted on the validation split (Guo et al. 2017).

A network trained to a low loss is usually over-confident: its softmax says 0.99 where it is right
nine times in ten. Dividing the logits by one temperature T > 0, fitted to minimise the validation
negative log-likelihood, fixes most of that without changing a single prediction (the argmax is
the same). headstart fits T after training, stores it in best.pt ("temperature", with the
before/after figures in "calibration"), and every consumer divides by it: predict, evaluate,
serve and each export format.

Expected calibration error (ECE): the confidence of the top class in 15 equal-width bins, the
gap between each bin's mean confidence and its accuracy, weighted by the bin's share of images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from headstart.tasks.single_label import SINGLE_LABEL

BINS = 15
# Beyond these the fit is degenerate (all predictions right or all wrong on a tiny split): keep it bounded.
MIN_T, MAX_T = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T): LBFGS on log T, in float64."""
    if len(labels) < 2 or logits.shape[1] < 2:
        return 1.0
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = SINGLE_LABEL.nll(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().exp())
    return min(max(value, MIN_T), MAX_T) if value == value else 1.0  # NaN: no fit, no change


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and count of the images whose top probability falls in it."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence.double(), edges[1:-1], right=True)
    table: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for index in range(bins):
        inside = which == index
        count = int(inside.sum())
        table["count"].append(count)
        table["confidence"].append(float(confidence[inside].double().mean()) if count else 0.0)
        table["accuracy"].append(float(correct[inside].mean()) if count else 0.0)
    return table


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    table = reliability(probabilities, labels, bins)
    total = max(sum(table["count"]), 1)
    return sum(n / total * abs(c - a) for n, c, a in zip(table["count"], table["confidence"], table["accuracy"]))


@dataclass
class Calibration:
    temperature: float
    images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins_before: dict[str, list[float]] = field(default_factory=dict)
    bins_after: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        return cls(**values)

    def summary_line(self) -> str:
        return (
            f"calibration: temperature {self.temperature:.3f} fitted on {self.images} val images, "
            f"ECE {self.ece_before:.3f} -> {self.ece_after:.3f}, NLL {self.nll_before:.4f} -> {self.nll_after:.4f}"
        )


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Fit the temperature on (logits, labels) and measure ECE and NLL before and after."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    temperature = fit_temperature(logits, labels)
    before, after = SINGLE_LABEL.probabilities(logits), SINGLE_LABEL.probabilities(logits, temperature)
    return Calibration(
        temperature=temperature,
        images=len(labels),
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        nll_before=float(SINGLE_LABEL.nll(logits, labels)),
        nll_after=float(SINGLE_LABEL.nll(logits / temperature, labels)),
        bins_before=reliability(before, labels),
        bins_after=reliability(after, labels),
    )
