"""Where a stage's fixed part ends: the cut point, and whether everything before it may be cached.

A stage's frozen prefix is a fixed function of the image when its weights are frozen, its
BatchNorm layers do not update, no noise adapter draws and no random augmentation runs; then its
outputs can be computed once (headstart.training.features) and only the part after the cut trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.model.build import Classifier, GaussianNoise, GlobalAvgPool
from headstart.model.freeze import FreezePlan


@dataclass
class Cut:
    """The model split at a stage's cut point: `prefix` is fixed and cached, `suffix` trains on its outputs.

    `penultimate` is the suffix up to (not including) the head's last Linear: what the unknown-image
    detector reads. `to_head` (a cut inside the backbone only) runs the rest of the backbone and the
    head's pooling on this cut's outputs, giving the head cut's outputs: the one pass that fills this
    cut's cache fills the head stage's too (headstart.training.features).
    """

    name: str
    prefix: nn.Module
    suffix: nn.Module
    penultimate: nn.Module
    to_head: nn.Module | None = None


class _Chain(nn.Module):
    """Modules applied one after another (a view over the model's own modules, not a copy)."""

    def __init__(self, modules: list[nn.Module], to_nchw: bool = False):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.to_nchw = to_nchw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.parts:
            x = module(x)
        return x.permute(0, 3, 1, 2) if self.to_nchw and x.ndim == 4 else x


class _Features(nn.Module):
    """Adapters + backbone features of a Classifier, holding only those two parts (not the head)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.adapter, self.backbone = model.adapter, model.backbone
        self.nhwc = model.nhwc_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone.forward_features(self.adapter(x))  # type: ignore[operator]  # timm's own method
        return x.permute(0, 3, 1, 2) if self.nhwc and x.ndim == 4 else x


def head_split(model: Classifier) -> int:
    """How many leading head modules are parameter-free and deterministic (pooling, flatten): they join the cached prefix."""
    count = 0
    for module in model.head:
        if not isinstance(module, (GlobalAvgPool, nn.Flatten)):
            break
        count += 1
    return count


@torch.no_grad()
def backbone_chain(model: Classifier, image_size: int) -> list[tuple[str, nn.Module]] | None:
    """The backbone's forward_features as a chain of its own top-level children, or None where it is more than that.

    The children forward_features calls are recorded with hooks, then chaining them is checked to
    give exactly forward_features' output (a ViT adds position embeddings between them: no chain).
    """
    backbone = model.backbone
    children = dict(backbone.named_children())
    called: list[str] = []
    hooks = [
        child.register_forward_hook(lambda _m, _i, _o, name=name: called.append(name))
        for name, child in children.items()
    ]
    was_training = model.training
    model.eval()
    try:
        x = model.adapter(torch.randn(1, 3, image_size, image_size, device=next(model.parameters()).device))
        expected = backbone.forward_features(x)  # type: ignore[operator]  # timm's own method
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not called or len(called) != len(set(called)):
        return None
    model.eval()
    chained = x
    try:
        for name in called:
            chained = children[name](chained)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None  # the children need more between them than each other's output
    finally:
        model.train(was_training)
    if chained.shape != expected.shape or not torch.allclose(chained, expected, atol=1e-5):
        return None
    return [(f"backbone.{name}", children[name]) for name in called]


def find_cut(model: Classifier, plan: FreezePlan, image_size: int) -> Cut | None:
    """Where a stage's fixed prefix ends: after the head's pooling when only the head trains, else at the
    first trainable module of the backbone's chain (None when the backbone is no plain chain there)."""
    split = head_split(model)
    if plan.start == "head":
        suffix = model.head[split:]
        return Cut("head", nn.Sequential(_Features(model), *model.head[:split]), suffix, suffix[:-1])
    if plan.start is None or not plan.start.startswith("backbone."):
        return None
    chain = backbone_chain(model, image_size)
    if chain is None:
        return None
    # Open nn.Sequential elements until the freeze point is an element boundary.
    while True:
        holder = next(
            (i for i, (name, _) in enumerate(chain) if plan.start == name or plan.start.startswith(name + ".")), None
        )
        if holder is None:
            return None
        name, module = chain[holder]
        if name == plan.start or not isinstance(module, nn.Sequential):
            break
        chain[holder : holder + 1] = [(f"{name}.{child}", sub) for child, sub in module.named_children()]
    frozen = plan.frozen_params
    before = {f"{n}.{p}" for n, m in chain[:holder] for p, _ in m.named_parameters()}
    after = {f"{n}.{p}" for n, m in chain[holder:] for p, _ in m.named_parameters()}
    if not before <= frozen or after & frozen:
        return None  # the freeze point falls inside an element that cannot be opened
    to_nchw = model.nhwc_features
    prefix = _Chain([model.adapter, *(m for _, m in chain[:holder])])
    rest = _Chain([m for _, m in chain[holder:]], to_nchw)
    suffix = nn.Sequential(rest, model.head)
    return Cut(
        chain[holder][0], prefix, suffix, nn.Sequential(rest, model.head[:-1]), nn.Sequential(rest, *model.head[:split])
    )


def cache_decision(
    model: Classifier, plan: FreezePlan, augment: str, image_size: int, views: int = 0, enabled: bool = True
) -> tuple[Cut | None, str]:
    """(the cut to cache at, or None; why) for a stage whose freeze plan is `plan`; the reason is logged for the user."""
    if not enabled:
        return None, "feature cache switched off"
    if plan.start is None:
        return None, "nothing is frozen in this stage"
    cut = find_cut(model, plan, image_size)
    if cut is None:
        return None, f"the backbone's forward is not a plain chain of modules at '{plan.start}'"
    prefix_modules = list(cut.prefix.modules())
    # Read from the plan, not from requires_grad: a later stage's cut is decided before its plan is applied.
    if plan.bn_mode != "frozen" and any(
        isinstance(m, _BatchNorm) and any(True for _ in m.parameters(recurse=False)) for m in prefix_modules
    ):
        return None, f"BatchNorm gamma/beta in the frozen part train (bn={plan.bn_mode})"
    if plan.bn_mode == "train" and any(isinstance(m, _BatchNorm) for m in prefix_modules):
        return None, "frozen BatchNorm updates its running statistics (bn=train)"
    if any(isinstance(m, GaussianNoise) and m.sigma > 0 for m in prefix_modules):
        return None, "the noise adapter draws new noise every step"
    if augment != "none" and views < 1:
        return None, "train augmentation is on; set data.feature_views to cache augmented views"
    where = f"cut before {cut.name.removeprefix('backbone.')}"
    if augment != "none":
        return cut, f"frozen prefix is deterministic, {where}: {views} augmented view(s) per image cached"
    return cut, f"frozen prefix is deterministic, {where}: outputs computed once"
