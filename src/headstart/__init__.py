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
from headstart.layouts import DataSplit, list_images
from headstart.lr_find import lr_find
from headstart.recipe import DataConfig, HeadConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.report import report
from headstart.sweep import sweep
from headstart.train import TrainResult, train


def load(source, device: str = "auto"):
    """A Predictor for a run folder (its best.pt), a checkpoint or an exported model: .predict(images), .evaluate(folder)."""
    from headstart.inference import load as load_predictor  # sklearn's metrics load only when needed

    return load_predictor(source, device=device)


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
    "list_images",
    "load",
    "lr_find",
    "report",
    "sweep",
    "train",
]
__version__ = "0.1.0"
