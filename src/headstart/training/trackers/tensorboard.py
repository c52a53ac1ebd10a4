"""run.log tensorboard: RUN_DIR/tensorboard/, then `tensorboard --logdir runs/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.training.tracking import METRICS


class TensorBoardTracker:
    def __init__(self, run_dir: Path, recipe: Recipe):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise HeadstartError("run.log tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("recipe", f"```\n{recipe.to_yaml()}\n```")

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        for name in (m for m in METRICS if m in row):
            # train/ and val/ prefixes put train and val curves of one metric side by side in TensorBoard.
            tag = (
                f"{name.split('_')[0]}/{name.split('_', 1)[1]}"
                if name.startswith(("train_", "val_"))
                else f"run/{name}"
            )
            self.writer.add_scalar(tag, row[name], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
