"""Freeze points and the three BatchNorm modes, pinned after one real optimizer step."""

import pytest
import torch

from headstart.config.recipe import ModelConfig
from headstart.core.errors import HeadstartError
from headstart.model.build import build_model
from headstart.model.freeze import parameter_layers, plan_freeze

CNN = ModelConfig(
    backbone="headstart_cnn", weights="none", backbone_args={"widths": [4, 8], "convs_per_block": 1, "dropout": 0.0}
)


def one_step(model, plan):
    plan.apply(model)
    plan.set_mode(model, True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 3, 16, 16) * 2 + 1, torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize(
    "mode, gamma_trains, stats_move",
    [("frozen", False, False), ("affine", True, False), ("train", True, True)],
)
def test_bn_mode_in_frozen_part(mode, gamma_trains, stats_move):
    torch.manual_seed(0)
    model = build_model(CNN, num_classes=3, image_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_freeze(model, "blocks.1", mode)
    one_step(model, plan)
    after = model.state_dict()

    frozen_conv, frozen_bn = model.backbone.blocks[0][0], model.backbone.blocks[0][1]
    assert not frozen_conv.weight.requires_grad
    assert torch.equal(after["backbone.blocks.0.0.weight"], before["backbone.blocks.0.0.weight"])  # bit-identical
    assert frozen_bn.weight.requires_grad is gamma_trains and frozen_bn.bias.requires_grad is gamma_trains
    assert (not torch.equal(after["backbone.blocks.0.1.weight"], before["backbone.blocks.0.1.weight"])) is gamma_trains
    assert (
        not torch.equal(after["backbone.blocks.0.1.running_mean"], before["backbone.blocks.0.1.running_mean"])
    ) is stats_move
    assert frozen_bn.training is stats_move
    # The part from the freeze point on trains normally, its BatchNorm included.
    assert not torch.equal(after["backbone.blocks.1.0.weight"], before["backbone.blocks.1.0.weight"])
    assert not torch.equal(after["backbone.blocks.1.1.running_mean"], before["backbone.blocks.1.1.running_mean"])
    assert model.backbone.blocks[1][1].training


def test_freeze_backbone_trains_only_head():
    model = build_model(CNN, num_classes=3, image_size=16)
    plan_freeze(model, "backbone", "frozen").apply(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("head.")}


def test_freeze_none_trains_everything():
    model = build_model(CNN, num_classes=3, image_size=16)
    plan = plan_freeze(model, "none", "frozen")
    plan.apply(model)
    assert all(p.requires_grad for p in model.parameters()) and plan.frozen_modules == []


def test_integer_point_counts_parameter_layers_like_keras():
    model = build_model(CNN, num_classes=3, image_size=16)
    layers = parameter_layers(model)
    assert layers[:2] == ["backbone.blocks.0.0", "backbone.blocks.0.1"]
    plan = plan_freeze(model, 2, "frozen")  # layers[:2] frozen: first conv and its BatchNorm
    plan.apply(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.blocks.0.0.weight", "backbone.blocks.0.1.weight", "backbone.blocks.0.1.bias"}


def test_unknown_point_suggests_names():
    model = build_model(CNN, num_classes=3, image_size=16)
    with pytest.raises(HeadstartError, match="did you mean: blocks.1"):
        plan_freeze(model, "blocks.l", "frozen")
    with pytest.raises(HeadstartError, match="out of range"):
        plan_freeze(model, 99, "frozen")


def test_real_backbone_block_names():
    model = build_model(ModelConfig(backbone="test_efficientnet", weights="none"), num_classes=2, image_size=32)
    plan = plan_freeze(model, "blocks.2", "affine")
    plan.apply(model)
    assert not model.backbone.conv_stem.weight.requires_grad
    assert model.backbone.bn1.weight.requires_grad  # affine: frozen-part BN gamma trains
    assert all(p.requires_grad for p in model.backbone.blocks[2].parameters())
