"""Zero-shot ImageNet top-1 on hymenoptera/val: proves the packaged weights map onto timm's tf_ model.

ImageNet class 310 is 'ant', 309 is 'bee'. An image counts as right when the 1000-way argmax is the
true class. Compares the packaged TF-ported weights on tf_efficientnet_lite0 (TF 'same' padding,
mean = std = 0.5) with the same tensors on efficientnet_lite0 (symmetric padding, ImageNet mean/std).

Usage: python benchmarks/zero_shot_hymenoptera.py [DATA]   (default ../shared/data/hymenoptera)
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from timm.data import create_transform, resolve_data_config

from headstart.data.images import decode
from headstart.data.splits import list_class_folders
from headstart.model.weights import packaged_weights_file, read_state_dict

IMAGENET = {"ants": 310, "bees": 309}


def zero_shot(name: str, folder: Path) -> tuple[float, int]:
    model = timm.create_model(name).eval()
    state = read_state_dict(packaged_weights_file("tf_efficientnet_lite0"))
    model.load_state_dict(dict(zip(model.state_dict().keys(), state.values())))
    config = resolve_data_config(model=model)
    transform = create_transform(**config)
    right = total = 0
    for label, paths in list_class_folders(folder).items():
        for path in paths:
            from PIL import Image

            with torch.no_grad():
                image = Image.fromarray(decode(path, 256, "bicubic"))
                top = int(model(transform(image).unsqueeze(0)).argmax())
            right += top == IMAGENET[label]
            total += 1
    return right / total, total


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[2] / "shared/data/hymenoptera")
    for name in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        accuracy, count = zero_shot(name, data / "val")
        print(f"{name:<24} zero-shot ImageNet top-1 on {count} val images (ant=310, bee=309): {accuracy:.3f}")


if __name__ == "__main__":
    main()
