"""headstart: fine-tune pretrained image classifiers on your own image folders.

    >>> import headstart
    >>> result = headstart.train({"data": {"path": "photos/"}})
    >>> predictor = headstart.load(result.run_dir)
    >>> predictor.predict(["photos/cats/1.jpg"])
"""

from headstart.errors import HeadstartError
from headstart.recipe import DataConfig, HeadConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.train import TrainResult, train


def load(run_or_checkpoint, device: str = "auto"):
    """A Predictor for a run folder (its best.pt) or a checkpoint: .predict(images), .evaluate(folder)."""
    from headstart.inference import load as load_predictor  # sklearn's metrics load only when needed

    return load_predictor(run_or_checkpoint, device=device)


__all__ = [
    "DataConfig",
    "HeadConfig",
    "HeadstartError",
    "ModelConfig",
    "Recipe",
    "RunConfig",
    "Stage",
    "TrainResult",
    "load",
    "train",
]
__version__ = "0.1.0"
