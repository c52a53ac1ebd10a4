"""The columns of a comparison: which scores, their headers, and how a cell is written.

"best" is the epoch the run kept as best.pt (by its run.monitor), not the highest value of each column.
Multi-label runs (history rows with val_map) are compared on their own scores (TAG_METRICS).
"""

from __future__ import annotations

import math

METRICS = [
    "best_val_loss",
    "best_val_acc",
    "best_val_balanced_acc",
    "best_val_f1",
    "final_val_loss",
    "final_val_acc",
    "test_loss",
    "test_acc",
    "test_balanced_acc",
    "test_f1",
    "epochs",
    "seconds",
    "trainable_params",
]
TAG_METRICS = [
    "best_val_loss",
    "best_val_map",
    "best_val_f1_micro",
    "best_val_f1_macro",
    "best_val_exact_match",
    "final_val_loss",
    "final_val_map",
    "test_loss",
    "test_map",
    "test_f1_micro",
    "test_f1_macro",
    "test_exact_match",
    "epochs",
    "seconds",
    "trainable_params",
]
TAG_SCORES = {"map": "mAP", "f1_micro": "micro-F1", "f1_macro": "macro-F1", "exact_match": "exact match"}
HEADERS = {
    "best_val_loss": "best.pt val loss",
    "best_val_acc": "best.pt val acc",
    "best_val_balanced_acc": "best.pt val balanced acc",
    "best_val_f1": "best.pt val macro-F1",
    "test_loss": "test loss",
    "test_acc": "test acc",
    "test_balanced_acc": "test balanced acc",
    "test_f1": "test macro-F1",
    "final_val_loss": "last epoch val loss",
    "final_val_acc": "last epoch val acc",
    "final_val_balanced_acc": "last epoch val balanced acc",
    "final_val_f1": "last epoch val macro-F1",
    "epochs": "epochs",
    "seconds": "run wall time (s)",
    "trainable_params": "trainable params (last stage)",
}
for _score, _name in TAG_SCORES.items():
    HEADERS.update(
        {f"best_val_{_score}": f"best.pt val {_name}", f"final_val_{_score}": f"last epoch val {_name}"}
        | {f"test_{_score}": f"test {_name}"}
    )


def cell(metric: str, mean: float, std: float | None) -> str:
    if math.isnan(mean):
        return "-"
    if metric in ("epochs", "trainable_params"):
        text = f"{mean:,.0f}"
    elif metric == "seconds":
        text = f"{mean:.1f}"
    else:
        text = f"{mean:.4f}"
    if std is not None and metric not in ("epochs", "trainable_params"):
        text += f" ± {std:.1f}" if metric == "seconds" else f" ± {std:.4f}"
    return text
