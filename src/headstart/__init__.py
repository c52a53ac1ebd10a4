"""headstart: fine-tune pretrained image classifiers on your own image folders.

    >>> import headstart
    >>> result = headstart.train({"data": {"path": "photos/"}})
    >>> predictor = headstart.load(result.run_dir)
    >>> predictor.predict(["photos/cats/1.jpg"])
"""

from headstart.errors import HeadstartError
from headstart.recipe import DataConfig, HeadConfig, ModelConfig, Recipe, RunConfig, Stage
from headstart.train import TrainResult, train

__all__ = [
    "DataConfig",
    "HeadConfig",
    "HeadstartError",
    "ModelConfig",
    "Recipe",
    "RunConfig",
    "Stage",
    "TrainResult",
    "train",
]
__version__ = "0.1.0"
