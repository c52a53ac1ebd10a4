"""run.log wandb: a Weights & Biases run named after the run folder, the recipe as its config, every epoch's
numbers as metrics and curves.png at the end; its files go to RUN_DIR/wandb/.

W&B's own settings apply: WANDB_PROJECT (default here: headstart), WANDB_ENTITY, and WANDB_MODE=offline
to keep the run on disk (RUN_DIR/wandb/offline-run-*) and upload it later with `wandb sync`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.core.runs import CURVES_FILE
from headstart.training.tracking import METRICS

log = logging.getLogger(__name__)


class WandbTracker:
    def __init__(self, run_dir: Path, recipe: Recipe):
        try:
            import wandb
        except ImportError:
            raise HeadstartError(f"run.log wandb needs the wandb package: {install_hint('track')}") from None
        self.wandb, self.run_dir, self.step = wandb, run_dir, 0
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "headstart",
                name=run_dir.name,
                dir=str(run_dir),
                config=recipe.to_dict(),
                # W&B's console lines and its copy of stdout would mix with headstart's own (which says where the run is).
                settings=wandb.Settings(silent=True, console="off"),
            )
        except wandb.errors.Error as err:
            why = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise HeadstartError(
                f"run.log wandb could not start a W&B run ({why}): run `wandb login`, or set WANDB_MODE=offline"
            ) from None
        # An offline run's url makes W&B print a warning of its own: offline, only the folder is asked for.
        log.info("W&B run: %s", f"offline in {self.run.dir}" if self.run.offline else self.run.url)

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self.step = step
        self.run.log({name: float(row[name]) for name in METRICS if name in row}, step=step)

    def close(self) -> None:
        curves = self.run_dir / CURVES_FILE
        if curves.is_file():  # at the last epoch's step: W&B steps only go up
            self.run.log({"curves": self.wandb.Image(str(curves))}, step=self.step)
        self.run.finish()
