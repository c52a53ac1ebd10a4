"""run.log mlflow: to $MLFLOW_TRACKING_URI (mlflow's default when unset), the recipe as parameters, the run folder as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.config.describe import flatten
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.training.tracking import METRICS


class MLflowTracker:
    def __init__(self, run_dir: Path, recipe: Recipe):
        try:
            import mlflow
        except ImportError:
            raise HeadstartError(
                "run.log mlflow needs the mlflow package: pip install mlflow-skinny (or mlflow)"
            ) from None
        self.mlflow, self.run_dir = mlflow, run_dir
        mlflow.set_experiment("headstart")
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({key: str(value)[:500] for key, value in flatten(recipe.to_dict()).items()})

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({name: float(row[name]) for name in METRICS if name in row}, step=step)

    def close(self) -> None:
        self.mlflow.log_artifacts(str(self.run_dir), artifact_path="run")
        self.mlflow.end_run()
