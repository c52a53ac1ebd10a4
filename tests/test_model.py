"""Adapters, heads and their composition over several backbone families."""

import pytest
import torch

from headstart.config.recipe import DataConfig, HeadConfig, ModelConfig
from headstart.core.errors import HeadstartError
from headstart.model.build import GaussianNoise, Resize, build_model, identity_conv, resolve_preprocessing


def test_noise_only_in_training():
    noise = GaussianNoise(0.5)
    x = torch.zeros(4, 3, 32, 32)
    assert torch.equal(noise.eval()(x), x)
    out = noise.train()(x)
    assert 0.45 < out.std().item() < 0.55


@pytest.mark.parametrize("factor, size, expected", [(2.0, None, 32), (None, 40, 40)])
def test_resize(factor, size, expected):
    assert Resize(factor, size, "bilinear")(torch.zeros(2, 3, 16, 16)).shape == (2, 3, expected, expected)


def test_conv_adapter_starts_as_identity_and_learns():
    conv = identity_conv(3)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(conv(x), x, atol=1e-6)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["headstart_cnn", "test_efficientnet", "test_resnet", "test_vit"])
@pytest.mark.parametrize("head", ["linear", "gap-dense", "flatten-dense"])
def test_heads_on_backbones(backbone, head):
    size = 32 if backbone != "test_vit" else 160
    cfg = ModelConfig(backbone=backbone, weights="none", head=HeadConfig(kind=head, hidden=16, dropout=0.5))
    model = build_model(cfg, num_classes=5, image_size=size)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.head[-1].weight.grad is not None
    if head != "linear":
        assert model.head[-4].out_features == 16  # the hidden Dense layer


def test_adapters_chain_in_front_of_backbone():
    cfg = ModelConfig(
        backbone="test_efficientnet",
        weights="none",
        adapters=[{"kind": "noise", "sigma": 0.01}, {"kind": "resize", "factor": 2}, {"kind": "conv"}],
    )
    model = build_model(cfg, num_classes=3, image_size=16)
    assert [type(m).__name__ for m in model.adapter] == ["GaussianNoise", "Resize", "Conv2d"]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_preprocessing_from_pretrained_cfg_with_overrides():
    lite = resolve_preprocessing(DataConfig(), ModelConfig())
    assert lite["mean"] == (0.5, 0.5, 0.5) and lite["std"] == (0.5, 0.5, 0.5) and lite["image_size"] == 224
    assert lite["interpolation"] == "bicubic"
    resnet = resolve_preprocessing(DataConfig(image_size=128), ModelConfig(backbone="resnet18"))
    assert resnet["image_size"] == 128 and resnet["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_unknown_backbone_suggests():
    with pytest.raises(HeadstartError, match="did you mean: resnet18"):
        build_model(ModelConfig(backbone="resnet81", weights="none"), num_classes=2)


def test_too_small_input_is_explained():
    with pytest.raises(HeadstartError, match="cannot take"):
        build_model(ModelConfig(backbone="inception_v3", weights="none"), num_classes=2, image_size=16)
