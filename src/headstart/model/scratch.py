"""A from-scratch CNN family (article 001), registered in timm so recipes name it like any backbone.

    headstart_cnn: [Conv3x3 -> (BatchNorm) -> ReLU] x convs_per_block -> MaxPool -> (Dropout), per width

Switches: batch_norm, dropout, widths (one block per width), convs_per_block.
"""

from __future__ import annotations

from timm.models import register_model
from torch import nn

# What a CIFAR-sized scratch model expects; recipes may override any of it.
SCRATCH_CFG = {
    "input_size": (3, 32, 32),
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2470, 0.2435, 0.2616),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "classifier": "classifier",
    "num_classes": 10,
}


class ScratchCNN(nn.Module):
    """Plain VGG-style CNN with BatchNorm and Dropout as switches; forward_features gives the last map."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        convs_per_block: int = 2,
        batch_norm: bool = True,
        dropout: float = 0.25,
        in_chans: int = 3,
    ):
        super().__init__()
        blocks = []
        channels = in_chans
        for width in widths:
            layers: list[nn.Module] = []
            for _ in range(convs_per_block):
                # Bias is redundant right before a BatchNorm, which has its own shift.
                layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.num_features = channels
        # timm's description of the stages (Grad-CAM's target layer is the last one's output).
        self.feature_info = [
            {"num_chs": width, "reduction": 2 ** (i + 1), "module": f"blocks.{i}"} for i, width in enumerate(widths)
        ]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = dict(SCRATCH_CFG, num_classes=num_classes)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer groups: one stage per conv block (lets 'top:N' freeze points work)."""
        return {"stem": r"^blocks\.0\.", "blocks": r"^blocks\.(\d+)"}

    def forward_features(self, x):
        return self.blocks(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.classifier(self.global_pool(self.forward_features(x)).flatten(1))


@register_model
def headstart_cnn(pretrained: bool = False, **kwargs) -> ScratchCNN:
    if pretrained:
        raise ValueError("headstart_cnn is trained from scratch; it has no pretrained weights")
    # What timm's factory adds for every model; anything else is the user's and must be a real switch.
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_only, None)
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    return ScratchCNN(**kwargs)
