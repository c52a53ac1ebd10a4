"""Which parameters train, and what each BatchNorm layer in the frozen part does.

A freeze point splits the model in module order: everything before it is frozen, the point and
everything after it train. BatchNorm layers inside the frozen part follow one explicit mode:

    frozen   eval mode: running mean/var fixed; gamma/beta get no gradient
    affine   eval mode: running mean/var fixed; gamma/beta trained
    train    train mode: running mean/var updated from every batch; gamma/beta trained
             (what old Keras did with "frozen" layers; article 000 measured it best)

Every other frozen module (Dropout, drop-path, the noise adapter) runs in eval mode, so the
frozen part is a fixed function of its input unless bn='train'.

Example:
    >>> plan = plan_freeze(model, "blocks.5", bn_mode="affine")
    >>> plan.apply(model)          # sets requires_grad
    >>> plan.set_mode(model, True) # use instead of model.train()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from timm.models import group_modules
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.config.recipe import Stage
from headstart.core.errors import HeadstartError, close_matches
from headstart.model.build import Classifier


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in order: the 'layers' an integer freeze point counts."""
    return [
        name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))
    ]


def block_names(model: Classifier) -> list[str]:
    """Names a user would freeze up to: the backbone's children, and the elements of its Sequential/ModuleList children."""
    names = []
    for name, child in model.backbone.named_children():
        if any(True for _ in child.parameters()):
            names.append(name)
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                names.extend(f"{name}.{sub}" for sub, _ in child.named_children())
    return names


def backbone_stages(model: Classifier) -> list[str]:
    """First module of each of the backbone's stages, bottom up, from timm's own coarse layer groups."""
    backbone = model.backbone
    if not hasattr(backbone, "group_matcher"):
        raise HeadstartError(
            f"'top:N' needs a backbone with timm layer groups; {type(backbone).__name__} has none: name a module instead"
        )
    # timm's own method; nn.Module types an attribute it does not know as Tensor | Module.
    groups = group_modules(backbone, backbone.group_matcher(coarse=True), reverse=False)  # type: ignore[operator]
    present = dict(backbone.named_modules())
    firsts = []
    for group in sorted(groups):
        # Skip groups of modules forward_features never runs (a removed pre_logits MLP, a ConvNeXt head norm).
        names = [
            name
            for name in groups[group]
            if name in present
            and not name.startswith(("head.", "pre_logits"))
            and any(True for _ in present[name].parameters())
        ]
        if names:
            firsts.append(f"backbone.{names[0]}")
    return firsts


def resolve_point(model: Classifier, point: str | int) -> str | None:
    """The module name where training starts, or None when nothing is frozen."""
    if point == "none" or point == 0:
        return None
    if point == "backbone":
        return "head"
    if isinstance(point, str) and point.startswith("top:"):
        count = point.removeprefix("top:")
        stages = backbone_stages(model)
        if not count.isdigit() or not 1 <= int(count) <= len(stages):
            raise HeadstartError(f"freeze '{point}': N must be 1..{len(stages)}, the number of stages of this backbone")
        return stages[-int(count)]
    modules = dict(model.named_modules())
    if isinstance(point, int):
        layers = parameter_layers(model)
        if point >= len(layers):
            raise HeadstartError(
                f"freeze index {point} is out of range: this model has {len(layers)} layers with parameters (valid: 0..{len(layers) - 1}, 'none', 'backbone' or a module name)"
            )
        return layers[point]
    for candidate in (point, f"backbone.{point}", f"adapter.{point}"):
        if candidate in modules and candidate != "":
            return candidate
    raise HeadstartError(
        f"unknown freeze point '{point}'{close_matches(point, block_names(model))}; valid: 'none', 'backbone', 'top:N', "
        f"a layer index, or a module name such as {', '.join(block_names(model)[:8])}"
    )


@dataclass
class FreezePlan:
    """The frozen part of a model for one stage and the BatchNorm mode inside it."""

    start: str | None
    bn_mode: str
    frozen_modules: list[str] = field(default_factory=list)
    frozen_params: set[str] = field(default_factory=set)
    frozen_batchnorms: list[str] = field(default_factory=list)

    def apply(self, model: nn.Module) -> None:
        """Set requires_grad: frozen parameters off (BatchNorm gamma/beta on unless bn_mode='frozen')."""
        trainable_bn: set[str] = set()
        if self.bn_mode != "frozen":
            modules = dict(model.named_modules())
            for name in self.frozen_batchnorms:
                trainable_bn.update(f"{name}.{p}" for p, _ in modules[name].named_parameters(recurse=False))
        for name, param in model.named_parameters():
            param.requires_grad = name not in self.frozen_params or name in trainable_bn

    def set_mode(self, model: nn.Module, training: bool) -> None:
        """model.train(training), then the frozen part back to eval (BatchNorm kept training if bn_mode='train')."""
        model.train(training)
        if not training:
            return
        modules = dict(model.named_modules())
        for name in self.frozen_modules:
            modules[name].eval()
        if self.bn_mode == "train":
            for name in self.frozen_batchnorms:
                modules[name].train()


def plan_freeze(model: Classifier, point: str | int, bn_mode: str) -> FreezePlan:
    """Work out the frozen modules and parameters for `point` (see the module docstring)."""
    modes = get_args(Stage.model_fields["bn"].annotation)  # the recipe's Literal is the one list
    if bn_mode not in modes:
        raise HeadstartError(f"unknown BatchNorm mode '{bn_mode}'; valid: {', '.join(modes)}")
    start = resolve_point(model, point)
    if start is None:
        return FreezePlan(start=None, bn_mode=bn_mode)
    named = list(model.named_modules())
    position = [name for name, _ in named].index(start)
    ancestors = {start.rsplit(".", i)[0] for i in range(1, start.count(".") + 1)} | {""}
    frozen_modules = [name for name, _ in named[:position] if name not in ancestors]
    modules = dict(named)
    frozen_params = {
        f"{name}.{p}" if name else p
        for name in frozen_modules
        for p, _ in modules[name].named_parameters(recurse=False)
    }
    # Parameters held directly by an ancestor (a ViT's pos_embed, cls_token) feed the first blocks,
    # so they belong to the frozen part whenever anything is frozen.
    for name in ancestors:
        frozen_params.update(f"{name}.{p}" if name else p for p, _ in modules[name].named_parameters(recurse=False))
    bn_names = [name for name in frozen_modules if isinstance(modules[name], _BatchNorm)]
    return FreezePlan(start, bn_mode, frozen_modules, frozen_params, bn_names)


def plan_stages(model: Classifier, stages) -> list[FreezePlan]:
    """One freeze plan per recipe stage, each point checked against the model (a bad one is a one-line error)."""
    return [plan_freeze(model, stage.freeze, stage.bn) for stage in stages]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts under the current requires_grad flags."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total - trainable
