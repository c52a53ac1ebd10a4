"""A Keras-style model summary: each block's output shape, parameters, and what trains in each stage."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.config.recipe import Stage
from headstart.model.build import Classifier
from headstart.model.freeze import FreezePlan


def summary_rows(model: Classifier) -> list[str]:
    """The modules shown as rows: children of adapter, backbone and head, with multi-block containers opened once."""
    rows: list[str] = []
    for part in ("adapter", "backbone", "head"):
        for name, child in getattr(model, part).named_children():
            grandchildren = list(child.named_children())
            opened = isinstance(child, (nn.Sequential, nn.ModuleList)) and len(grandchildren) > 1 and part == "backbone"
            rows.extend(f"{part}.{name}.{sub}" for sub, _ in grandchildren) if opened else rows.append(f"{part}.{name}")
    return rows


def output_shapes(model: Classifier, rows: list[str], image_size: int) -> dict[str, tuple[int, ...]]:
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(_module, _inputs, output) -> None:  # returning anything would replace the output
            shapes.setdefault(name, tuple(output.shape[1:]))

        return record

    hooks = [modules[name].register_forward_hook(recorder(name)) for name in rows]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return shapes


def _status(module: nn.Module, prefix: str, plan: FreezePlan) -> str:
    params = [(f"{prefix}.{n}", p) for n, p in module.named_parameters()]
    if not params:
        return "-"
    frozen = sum(1 for n, _ in params if n in plan.frozen_params)
    if frozen == 0:
        return "train"
    has_bn = any(isinstance(m, _BatchNorm) for m in module.modules())
    label = "frozen" if frozen == len(params) else "partial"
    return f"{label}+bn:{plan.bn_mode}" if has_bn and plan.bn_mode != "frozen" else label


def summarize(
    model: Classifier,
    stages: list[Stage],
    plans: list[FreezePlan],
    image_size: int,
    print_fn: Callable[[str], None] | None = None,
) -> str:
    """The summary as text (also passed line by line to print_fn, like Keras' print_summary)."""
    rows = summary_rows(model)
    shapes = output_shapes(model, rows, image_size)
    modules = dict(model.named_modules())
    stage_cols = [stage.name[:14] for stage in stages]
    header = f"{'layer (type)':<44}{'output shape':<20}{'params':>12}  " + "".join(f"{c:<16}" for c in stage_cols)
    lines = [f"input: (3, {image_size}, {image_size})", header, "=" * len(header)]
    for name in rows:
        module = modules[name]
        count = sum(p.numel() for p in module.parameters())
        if name not in shapes and count == 0:
            continue  # a timm module that forward_features never runs (its pooling, the removed classifier)
        shape = str(shapes.get(name, "")).replace(" ", "")
        label = f"{name.removeprefix('backbone.')} ({type(module).__name__})"
        lines.append(
            f"{label[:43]:<44}{shape[:19]:<20}{count:>12,}  "
            + "".join(f"{_status(module, name, plan):<16}" for plan in plans)
        )
    lines.append("=" * len(header))
    total = sum(p.numel() for p in model.parameters())
    lines.append(f"total params: {total:,}")
    all_named = list(model.named_parameters())
    for stage, plan in zip(stages, plans):
        frozen = sum(p.numel() for n, p in all_named if n in plan.frozen_params)
        bn_trainable = 0
        if plan.bn_mode != "frozen":
            for bn in plan.frozen_batchnorms:
                bn_trainable += sum(p.numel() for p in modules[bn].parameters(recurse=False))
        frozen -= bn_trainable
        lines.append(
            f"stage '{stage.name}': trainable {total - frozen:,} / non-trainable {frozen:,} "
            f"(freeze {stage.freeze!r}, bn {stage.bn}: {len(plan.frozen_batchnorms)} BatchNorm layer(s) in the frozen part)"
        )
    text = "\n".join(lines)
    if print_fn is not None:
        for line in lines:
            print_fn(line)
    return text
