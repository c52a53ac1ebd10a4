"""A classifier is input adapters -> pretrained backbone -> new head, each built by name.

Example:
    >>> from headstart.config.recipe import ModelConfig
    >>> model = build_model(ModelConfig(weights="package"), num_classes=2)
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn

import headstart.model.scratch  # noqa: F401 - registers headstart_cnn with timm
from headstart.config.recipe import ConvAdapter, DataConfig, HeadConfig, ModelConfig, NoiseAdapter, ResizeAdapter
from headstart.core.checkpoint import Checkpoint
from headstart.core.errors import HeadstartError, close_matches
from headstart.model.weights import default_source, load_backbone_weights

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- adapters


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise in training mode only, like Keras' GaussianNoise."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + torch.randn_like(x) * self.sigma
        return x

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class Resize(nn.Module):
    """Resizes the batch inside the network (article 002's UpSampling2D), by factor or to a square size."""

    def __init__(self, factor: float | None, size: int | None, mode: str):
        super().__init__()
        self.factor, self.size, self.mode = factor, size, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smooth = self.mode in ("bilinear", "bicubic")
        if self.size is not None:
            return F.interpolate(
                x, size=(self.size, self.size), mode=self.mode, align_corners=False if smooth else None
            )
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=False if smooth else None)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}" if self.size else f"factor={self.factor}, mode={self.mode}"


def identity_conv(kernel_size: int) -> nn.Conv2d:
    """A learnable 3->3 conv that starts as the identity, so the pretrained backbone first sees its usual input."""
    conv = nn.Conv2d(3, 3, kernel_size, padding=kernel_size // 2)
    nn.init.dirac_(conv.weight)
    assert conv.bias is not None  # Conv2d has a bias unless bias=False
    nn.init.zeros_(conv.bias)
    return conv


def build_adapter(spec: NoiseAdapter | ResizeAdapter | ConvAdapter) -> nn.Module:
    if isinstance(spec, NoiseAdapter):
        return GaussianNoise(spec.sigma)
    if isinstance(spec, ResizeAdapter):
        return Resize(spec.factor, spec.size, spec.mode)
    return identity_conv(spec.kernel_size)


# ----------------------------------------------------------------------------- heads


class GlobalAvgPool(nn.Module):
    """Average over space (NCHW maps) or over tokens (transformer outputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x.mean(dim=1)


def build_head(spec: HeadConfig, feature_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The new classifier over the backbone's feature map of shape `feature_shape` (no batch dim)."""
    channels = feature_shape[0] if len(feature_shape) == 3 else feature_shape[-1]
    if spec.kind == "linear":
        return nn.Sequential(GlobalAvgPool(), nn.Dropout(spec.dropout), nn.Linear(channels, num_classes))
    if spec.kind == "gap-dense":
        return nn.Sequential(
            GlobalAvgPool(),
            nn.Linear(channels, spec.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, num_classes),
        )
    flat = 1
    for size in feature_shape:
        flat *= size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(flat, spec.hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(spec.dropout),
        nn.Linear(spec.hidden, num_classes),
    )


# ----------------------------------------------------------------------------- composition


class Classifier(nn.Module):
    """adapter -> backbone.forward_features -> head. `pretrained_cfg` is the backbone's preprocessing."""

    def __init__(self, adapter: nn.Sequential, backbone: nn.Module, head: nn.Sequential, channels_last_output: bool):
        super().__init__()
        self.adapter = adapter
        self.backbone = backbone
        self.head = head
        # A few timm families (Swin, ConvNeXt-V2 in NHWC mode) return channels-last feature maps.
        self.nhwc_features = channels_last_output

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return dict(getattr(self.backbone, "pretrained_cfg", {}) or {})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # timm's own method; nn.Module types an attribute it does not know as Tensor | Module.
        x = self.backbone.forward_features(self.adapter(x))  # type: ignore[operator]
        return x.permute(0, 3, 1, 2) if self.nhwc_features and x.ndim == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """What the head's last Linear takes (every head kind ends in one): the features unknown images are told by."""
        return self.head[:-1](self.features(x))


class WithScore(nn.Module):
    """A classifier with a second output from the same pass: `score` of its penultimate features.

    What predicting and every exported graph run when the model has an unknown-image detector
    (headstart.tasks.unknown): (logits [N, classes], score [N]).
    """

    score_output = True  # what exporters ask (returns_score): an ensemble of these says the same

    def __init__(self, classifier: nn.Module, score: nn.Module):
        super().__init__()
        self.classifier, self.score = classifier, score

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.classifier
        if isinstance(net, Classifier):
            penultimate, output = net.penultimate(x), net.head[-1]
        else:  # a stock timm classifier (a Hub folder in timm's layout): its pooled features, then its classifier
            penultimate = net.forward_head(net.forward_features(x), pre_logits=True)  # type: ignore[operator]
            output = net.get_classifier()  # type: ignore[operator]
        return output(penultimate), self.score(penultimate)


def returns_score(model: nn.Module) -> bool:
    """Whether `model` returns (logits, unknown-image score): a WithScore, or an ensemble of them."""
    return bool(getattr(model, "score_output", False))


def check_backbone_name(name: str) -> None:
    if not timm.is_model(name):
        raise HeadstartError(
            f"unknown backbone '{name}'{close_matches(name, timm.list_models())} (list them: headstart backbones PATTERN)"
        )


def create_backbone(cfg: ModelConfig) -> nn.Module:
    """The timm model with pretrained weights from the recipe's source, classifier removed."""
    check_backbone_name(cfg.backbone)
    source = cfg.weights or default_source(cfg.backbone)
    try:
        net = timm.create_model(cfg.backbone, pretrained=(source == "hub"), **cfg.backbone_args)
    except TypeError as err:
        raise HeadstartError(f"backbone_args for '{cfg.backbone}' rejected: {err}") from None
    except (OSError, RuntimeError, ValueError) as err:
        if source != "hub":
            raise
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise HeadstartError(
            f"could not get hub weights for '{cfg.backbone}' ({reason}); offline, use --weights package|file:PATH|none"
        ) from None
    load_backbone_weights(net, cfg.backbone, source)
    net.reset_classifier(0)  # type: ignore[operator]  # timm's own method (see Classifier.features)
    # forward_features never runs a VGG-style pre_logits MLP; keep it out of the model and its parameter count.
    pre_logits = getattr(net, "pre_logits", None)
    if isinstance(pre_logits, nn.Module) and any(True for _ in pre_logits.parameters()):
        net.pre_logits = nn.Identity()
    return net


def build_model(cfg: ModelConfig, num_classes: int, image_size: int | None = None) -> Classifier:
    """Compose adapters, backbone and head for `num_classes`; `image_size` is the size the data delivers."""
    backbone = create_backbone(cfg)
    adapter = nn.Sequential(*(build_adapter(spec) for spec in cfg.adapters))
    size = image_size or resolve_data_config(model=backbone)["input_size"][-1]
    nhwc = getattr(backbone, "output_fmt", "NCHW") in ("NHWC", "nhwc") or str(
        getattr(backbone, "output_fmt", "")
    ).endswith("NHWC")
    probe = Classifier(adapter, backbone, nn.Sequential(), nhwc).eval()
    with torch.no_grad():
        try:
            feature_shape = tuple(probe.features(torch.zeros(1, 3, size, size)).shape[1:])
        except RuntimeError as err:
            raise HeadstartError(
                f"'{cfg.backbone}' cannot take {size}x{size} input after the adapters ({str(err).splitlines()[0][:120]}); "
                "use a larger image_size or a resize adapter"
            ) from None
    head = build_head(cfg.head, feature_shape, num_classes)
    return Classifier(adapter, backbone, head, nhwc)


def resolve_preprocessing(data: DataConfig, model: ModelConfig) -> dict[str, Any]:
    """Image size, mean/std, interpolation and crop from the backbone's pretrained config, with the recipe's overrides.

    Read from timm's registry, so nothing is built or downloaded.
    """
    check_backbone_name(model.backbone)
    if model.backbone == "headstart_cnn":
        pretrained_cfg = headstart.model.scratch.SCRATCH_CFG
    else:
        found = timm.models.get_pretrained_cfg(model.backbone)
        pretrained_cfg = found.to_dict() if found is not None else {}
    base = resolve_data_config(pretrained_cfg=pretrained_cfg)
    return {
        "image_size": data.image_size or base["input_size"][-1],
        "mean": tuple(data.mean or base["mean"]),
        "std": tuple(data.std or base["std"]),
        "interpolation": data.interpolation or base.get("interpolation", "bilinear"),
        "crop_pct": data.crop_pct or base.get("crop_pct", 0.875),
    }


def model_from_checkpoint(checkpoint: Checkpoint) -> Classifier:
    """The trained model a checkpoint holds, rebuilt from its recipe without loading pretrained weights, in eval mode."""
    from headstart.config.recipe import Recipe

    recipe = Recipe.from_dict(checkpoint.recipe, source="checkpoint recipe")
    model = build_model(
        recipe.model.model_copy(update={"weights": "none"}),
        len(checkpoint.classes),
        checkpoint.preprocessing["image_size"],
    )
    model.load_state_dict(checkpoint.model)
    return model.eval()


def fold_temperature(model: Classifier, temperature: float) -> None:
    """Divide the output layer's weight and bias by `temperature`, so the model itself returns logits / T.

    An exported model then gives the calibrated probabilities in any runtime (timm, onnxruntime,
    torch.export) with nothing of headstart's beside it; the argmax is unchanged.
    """
    output = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        output.weight.div_(temperature)
        if output.bias is not None:
            output.bias.div_(temperature)
