"""headstart: fine-tune pretrained image classifiers on your own image folders.

>>> import headstart
>>> result = headstart.train({"data": {"path": "photos/"}})
>>> predictor = headstart.load(result.run_dir)
>>> predictor.predict(["photos/cats/1.jpg"])
>>> headstart.export(result.run_dir, format="onnx")
"""

from headstart.compare import compare
from headstart.errors import HeadstartError
from headstart.export import export
from headstart.inspection import inspect
from headstart.layouts import DataSplit, list_images
from headstart.lr_find import lr_find
from headstart.probe import probe
from headstart.push import push
from headstart.recipe import DataConfig, HeadConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.report import report
from headstart.sweep import sweep
from headstart.train import TrainResult, train


def load(source, device: str = "auto"):
    """A Predictor for a run folder (its best.pt), a checkpoint or an exported model: .predict(images), .evaluate(folder)."""
    from headstart.loading import load as load_predictor  # sklearn's metrics load only when needed

    return load_predictor(source, device=device)


def serve(
    source,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    window_ms: float = 5.0,
    max_bytes: int = 20 << 20,
    device: str = "auto",
) -> None:
    """Serve a run folder, checkpoint, exported file or Hub folder over HTTP (FastAPI + uvicorn) until interrupted."""
    from headstart.server import serve as run_server  # FastAPI is an optional extra

    run_server(source, host, port, max_batch, window_ms, max_bytes, device)


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
    "export",
    "inspect",
    "list_images",
    "load",
    "lr_find",
    "probe",
    "push",
    "report",
    "serve",
    "sweep",
    "train",
]
__version__ = "0.1.0"
