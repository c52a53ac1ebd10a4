"""The chosen model's outputs for what runs after the stages: calibration, the test score, the unknown-image detector.

Where the last cached stage's feature entry still holds for the loaded weights (its prefix checksum
matches: the default recipe's best weights always leave the frozen prefix as it was), the outputs are
computed from the stored features through the part after the cut, and no image is run again;
otherwise the images go through the whole model, as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from headstart.data.batches import make_loader
from headstart.data.images import train_view
from headstart.training.features import FeatureCache
from headstart.training.session import Session

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class ModelOutputs:
    """Outputs of the model as it is now (load the weights first), from cached features or from images."""

    def __init__(self, session: Session, cache: FeatureCache | None = None):
        self.session, self.cache = session, cache

    def cached(self) -> FeatureCache | None:
        """The feature cache when its entry holds for the current weights (checked on every call), else None."""
        return self.cache if self.cache is not None and self.cache.serves_current_weights() else None

    def scoring(self, split: str, everything: bool = False) -> tuple[nn.Module, Batches]:
        """The module and the batches of the val or test split that score it: this process's share, or all of them."""
        s = self.session
        if (cache := self.cached()) is not None:
            return cache.current_cut.suffix, cache.split_batches(split, everything)
        dataset = s.data.val if split == "val" else s.data.test
        assert dataset is not None
        rank, world = (0, 1) if everything else (s.group.rank, s.group.world)
        data, pin = s.recipe.data, s.hw.device.type == "cuda"
        loader = make_loader(dataset, data.batch_size, False, data.workers, s.recipe.run.seed, pin, rank, world)
        return s.model, iter(loader)

    def val_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels over the whole val split, on this process alone (calibration is rank 0's)."""
        s = self.session
        module, batches = self.scoring("val", everything=True)
        module.eval()
        logits, labels = [], []
        with torch.no_grad():
            for inputs, targets in batches:
                with s.hw.autocast():
                    logits.append(module(s.hw.to_input(inputs)).float().cpu())
                labels.append(targets)
        return torch.cat(logits), torch.cat(labels)

    def penultimate(self, split: str, rows: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the head's last Linear takes, for `rows` of the plain train images (None: all) or the whole val split.

        In float32 without the run's autocast: predict runs float32, and the detector's threshold must hold there.
        """
        s = self.session
        s.model.eval()
        cache = self.cached()
        if cache is not None and (split == "val" or cache.augment == "none"):
            stored = cache.split_rows(split, rows)
            cache.current_cut.penultimate.eval()
            with torch.no_grad():
                computed = [
                    cache.current_cut.penultimate(s.hw.to_input(chunk)).float().cpu()
                    for chunk in stored.split(s.recipe.data.batch_size)
                ]
            known = cache.labels(split)
            return torch.cat(computed), known if rows is None else known[rows]
        dataset: Dataset = s.data.val if split == "val" else _plain_train(s, rows)
        data = s.recipe.data
        features, labels = [], []
        with torch.no_grad():
            for inputs, targets in make_loader(dataset, data.batch_size, False, data.workers, s.recipe.run.seed):
                features.append(s.model.penultimate(s.hw.to_input(inputs)).float().cpu())
                labels.append(targets)
        return torch.cat(features), torch.cat(labels)


def _plain_train(session: Session, rows: list[int] | None) -> Dataset:
    plain = train_view(session.data, "none")
    return plain if rows is None else Subset(plain, rows)
