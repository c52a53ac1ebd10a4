"""Test-time augmentation at prediction: which modes there are, and the ten crops of the 'crops' mode."""

from __future__ import annotations

import torch

from headstart.core.errors import HeadstartError
from headstart.data.images import short_side_for

TTA_MODES = ("flip", "crops")


def tta_mode(tta: str | bool | None) -> str | None:
    """None, 'flip' or 'crops' (True means 'flip')."""
    mode = "flip" if tta is True else (tta or None)
    if mode not in (None, *TTA_MODES):
        raise HeadstartError(f"unknown test-time augmentation '{tta}'; valid: {', '.join(TTA_MODES)}")
    return mode


def ten_crops(preprocessing: dict):
    """Image -> [10, 3, S, S]: the four corner crops and the centre crop of the eval resize, and their mirror images."""
    from torchvision import transforms

    interpolation = transforms.InterpolationMode(preprocessing["interpolation"])
    normalize = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(preprocessing["mean"], preprocessing["std"])]
    )
    return transforms.Compose(
        [
            transforms.Resize(short_side_for(preprocessing), interpolation=interpolation),
            transforms.TenCrop(preprocessing["image_size"]),
            transforms.Lambda(lambda crops: torch.stack([normalize(crop) for crop in crops])),
        ]
    )
