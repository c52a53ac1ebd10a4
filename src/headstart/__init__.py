"""headstart: fine-tune pretrained image classifiers on your own image folders.

Examples:
    >>> import headstart
    >>> result = headstart.train({"data": {"path": "photos/"}})
    >>> predictor = headstart.load(result.run_dir)
    >>> predictor.predict(["photos/cats/1.jpg"])
    >>> predictor.explain(["photos/cats/1.jpg"], "heatmaps/")  # Grad-CAM: where the model saw its label
    >>> headstart.export(result.run_dir, format="onnx")
    >>> headstart.tune("photos/", trials=20, budget="1h").best_recipe  # Optuna search: runs/photos-tune/best.yaml
    >>> headstart.cv("photos/", folds=5).scores["val_acc"]  # k-fold: mean, std and each fold's value
"""

from headstart.config.recipe import DataConfig, HeadConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.core.errors import HeadstartError
from headstart.data.layouts import list_images
from headstart.data.splits import DataSplit
from headstart.deploy.export import export
from headstart.deploy.push import push
from headstart.experiments.compare import compare
from headstart.experiments.cv import cv
from headstart.experiments.probe import probe
from headstart.experiments.report import report
from headstart.experiments.sweep import sweep
from headstart.experiments.tune import tune
from headstart.inspection.inspect_data import inspect
from headstart.labeling.suggest import suggest
from headstart.training.lr_find import lr_find
from headstart.training.train import TrainResult


def train(recipe=None, *, quiet: bool = False, resume=None, on_epoch=None) -> TrainResult:
    """Run every stage of `recipe` (a Recipe, a YAML path, a dict, or None for the embedded default); its run folder.

    With `run.budget` ('10m', '1h'), the run is first planned to fit the budget (the backbone and
    fine-tuning depth, headstart.experiments.budget) and no epoch starts that would pass it.
    `resume=RUN_DIR` continues an interrupted run with its own saved recipe; `on_epoch(epochs_done,
    row)` is called after each epoch's history row is written (raise to stop the run: it stays resumable).
    """
    from headstart.experiments.budget import train_planned

    return train_planned(recipe, quiet=quiet, resume=resume, on_epoch=on_epoch)


def load(source, device: str = "auto", unknown: bool = True):
    """A Predictor for a run folder (its best.pt), a checkpoint or an exported model: .predict(images), .evaluate(folder),
    .explain(images, out_dir) (Grad-CAM heatmaps; not for exported files).

    Each prediction's `.unknown` says whether the image looks like none of the classes (where the run
    fitted an unknown-image detector); unknown=False turns that off.
    """
    from headstart.deploy.loading import load as load_predictor  # sklearn's metrics load only when needed

    return load_predictor(source, device=device, unknown=unknown)


def serve(
    source,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    window_ms: float = 5.0,
    max_bytes: int = 20 << 20,
    device: str = "auto",
    allowed_hosts: tuple[str, ...] | None = None,
    read_seconds: float = 30.0,
    unknown: bool = True,
) -> None:
    """Serve a run folder, checkpoint, exported file or Hub folder over HTTP (FastAPI + uvicorn) until interrupted.

    Clients slower than `read_seconds` are cut off; `allowed_hosts` (default: the loopback names on a
    loopback `host`) are the Host names answered.
    """
    from headstart.deploy.server import serve as run_server  # FastAPI is an optional extra

    run_server(
        source,
        host=host,
        port=port,
        max_batch=max_batch,
        window_ms=window_ms,
        max_bytes=max_bytes,
        device=device,
        allowed_hosts=allowed_hosts,
        read_seconds=read_seconds,
        unknown=unknown,
    )


__all__ = [
    "DataConfig",
    "DataSplit",
    "HeadConfig",
    "HeadstartError",
    "ModelConfig",
    "Recipe",
    "RunConfig",
    "Stage",
    "TrainResult",
    "compare",
    "cv",
    "export",
    "inspect",
    "list_images",
    "load",
    "lr_find",
    "probe",
    "push",
    "report",
    "serve",
    "suggest",
    "sweep",
    "train",
    "tune",
]
__version__ = "0.1.0"
