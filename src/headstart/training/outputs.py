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

    def scoring(self, split: str) -> tuple[nn.Module, Batches]:
        """The module and this process's share of batches that score_batches runs for the val or test split."""
        s = self.session
        if (cache := self.cached()) is not None:
            return cache.current_cut.suffix, cache.split_batches(split)
        dataset = s.data.val if split == "val" else s.data.test
        assert dataset is not None
        data = s.recipe.data
        pin = s.hw.device.type == "cuda"
        loader = make_loader(
            dataset, data.batch_size, False, data.workers, s.recipe.run.seed, pin, s.group.rank, s.group.world
        )
        return s.model, iter(loader)

    def val_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels over the whole val split, on this process alone (calibration is rank 0's)."""
        s = self.session
        if (cache := self.cached()) is not None:
            module, batches = cache.current_cut.suffix, cache.split_batches("val", everything=True)
        else:
            module, batches = s.model, iter(self._loader(s.data.val))
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
        self.session.model.eval()
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
        features, labels = [], []
        with torch.no_grad():
            for inputs, targets in self._loader(dataset):
                features.append(s.model.penultimate(s.hw.to_input(inputs)).float().cpu())
                labels.append(targets)
        return torch.cat(features), torch.cat(labels)

    def _loader(self, dataset: Dataset):
        data = self.session.recipe.data
        return make_loader(dataset, data.batch_size, False, data.workers, self.session.recipe.run.seed)


def _plain_train(session: Session, rows: list[int] | None) -> Dataset:
    plain = train_view(session.data, "none")
    return plain if rows is None else Subset(plain, rows)
