"""A Hub folder's config.json and model.safetensors, every field checked before anything is built.

The Hub-folder counterpart of export.read_sidecar: a folder from elsewhere is untrusted input, so
each field timm or headstart reads is checked for type and range here, and a problem is a one-line
error naming the field. Without it, a crafted folder ended in KeyError, RecursionError or
SafetensorError tracebacks, `input_size` 100000 or a 10**6-wide layer exhausted memory, and
`label_names: "xyz"` silently became the labels x, y, z.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import timm
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator
from safetensors import SafetensorError, safe_open

from headstart.config.describe import describe_validation_error
from headstart.config.recipe import MAX_IMAGE_SIZE, ModelConfig, Preprocessing, ResizeAdapter
from headstart.core.errors import HeadstartError, close_matches
from headstart.core.fileio import read_capped
from headstart.deploy.unknown import RuleFields

HUB_FORMAT = "headstart-hub-1"
MAX_CONFIG_BYTES = 16 << 20  # a million class names fit; a config is a few KB
MAX_NAME_LENGTH = 100  # timm's longest model name is ~60 characters
MAX_CLASSES = 1_000_000

Side = Annotated[StrictInt, Field(ge=1, le=MAX_IMAGE_SIZE)]
Number = Annotated[float, Field(strict=True)]  # strict: no "0.5" strings, no booleans
Positive = Annotated[float, Field(strict=True, gt=0)]
Labels = Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=1000)]], Field(max_length=MAX_CLASSES)]


def bounded(value: Any, depth: int = 0) -> bool:
    """Constructor arguments small enough to build: {"img_size": 100000} or {"widths": [10**7]} would exhaust memory."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and len(value) <= MAX_NAME_LENGTH):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) <= MAX_IMAGE_SIZE
    if isinstance(value, (list, dict)) and depth < 4 and len(value) <= 64:
        return all(bounded(v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


class PretrainedCfg(BaseModel):
    """The fields of timm's pretrained_cfg that preprocessing is built from (others are timm's own, kept)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    input_size: tuple[Literal[3], Side, Side]
    mean: tuple[Number, Number, Number]
    std: tuple[Positive, Positive, Positive]
    interpolation: Literal["bilinear", "bicubic", "nearest"]
    crop_pct: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.875  # timm's default where it is absent


class HeadstartBlock(BaseModel):
    """What headstart wrote beside timm's fields: the model recipe, the classes, the preprocessing, the temperature."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    format: Literal["headstart-hub-1"]
    layout: Literal["timm", "headstart"]
    model: dict[str, Any]
    classes: Labels
    preprocessing: Preprocessing
    temperature: Annotated[float, Field(strict=True, ge=0.01, le=100)] | None = None
    temperature_applied: StrictBool = False  # folded into the classifier's weights: for the reader only
    # What an output means: softmax over classes, or one sigmoid per tag given at or above its threshold.
    task: Literal["single-label", "multi-label"] = "single-label"
    thresholds: list[Annotated[float, Field(strict=False, ge=0, le=1)]] | None = None
    unknown: RuleFields | None = None  # the unknown-image threshold; its tensors are in unknown.safetensors

    @model_validator(mode="after")
    def _thresholds_per_tag(self) -> HeadstartBlock:
        if self.thresholds is not None and len(self.thresholds) != len(self.classes):
            raise ValueError(
                f"headstart.thresholds lists {len(self.thresholds)} values for {len(self.classes)} classes"
            )
        if self.thresholds is not None and self.task != "multi-label":
            raise ValueError("headstart.thresholds are for a multi-label model, but headstart.task is single-label")
        return self


class HubConfig(BaseModel):
    """config.json: timm's fields (architecture, num_classes, label_names, pretrained_cfg, model_args) + headstart's."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    architecture: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
    num_classes: Annotated[StrictInt, Field(ge=1, le=MAX_CLASSES)]
    label_names: Labels | None = None
    pretrained_cfg: PretrainedCfg
    model_args: dict[str, Any] = Field(default_factory=dict)
    headstart: HeadstartBlock | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HubConfig:
        for field, labels in (("label_names", self.label_names), ("headstart.classes", self.classes_given)):
            if labels is not None and len(labels) != self.num_classes:
                raise ValueError(f"{field} lists {len(labels)} names but num_classes is {self.num_classes}")
            if labels is not None and len(set(labels)) != len(labels):
                raise ValueError(f"{field}: class names repeat")
        if self.label_names is not None and self.classes_given is not None and self.label_names != self.classes_given:
            raise ValueError("label_names and headstart.classes differ")
        if self.model_args.get("num_classes", self.num_classes) != self.num_classes:
            raise ValueError(
                f"model_args.num_classes {self.model_args['num_classes']!r} is not num_classes {self.num_classes}"
            )
        # num_classes is checked above and against the weights' classifier (check_classifier), so it may be large.
        others = {k: v for k, v in self.model_args.items() if k != "num_classes"}
        for field, args in (("model_args", others), ("headstart.model", self.headstart and self.headstart.model)):
            if not bounded(args):
                raise ValueError(f"{field}: only numbers up to {MAX_IMAGE_SIZE}, short strings and short lists")
        return self

    @property
    def classes_given(self) -> list[str] | None:
        return None if self.headstart is None else self.headstart.classes

    @property
    def labels(self) -> list[str]:
        return self.classes_given or self.label_names or [str(i) for i in range(self.num_classes)]

    @property
    def preprocessing(self) -> dict[str, Any]:
        if self.headstart is not None:
            return self.headstart.preprocessing.model_dump()
        cfg = self.pretrained_cfg
        size = cfg.input_size[-1]
        return {
            "image_size": size,
            "mean": cfg.mean,
            "std": cfg.std,
            "interpolation": cfg.interpolation,
            "crop_pct": cfg.crop_pct,
        }


def read_hub_config(folder: Path) -> HubConfig:
    """The folder's config.json, every field checked; a one-line error naming the file and the bad field."""
    path = folder / "config.json"
    text = read_capped(path, MAX_CONFIG_BYTES, "Hub config")
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: arrays nested thousands deep
        raise HeadstartError(
            f"{path} is not valid JSON ({str(err).splitlines()[0][:120] or 'nested too deep'})"
        ) from None
    if not isinstance(values, dict):
        raise HeadstartError(
            f"{path} is not a timm Hub config: a JSON object with architecture, num_classes, pretrained_cfg"
        )
    try:
        config = HubConfig.model_validate(values)
    except ValidationError as err:
        raise HeadstartError(f"{path} is not a valid Hub config: {describe_validation_error(err)}") from None
    if not timm.is_model(config.architecture):
        choices = close_matches(config.architecture, timm.list_models())
        raise HeadstartError(f"{path}: architecture '{config.architecture}' is not a timm model{choices}")
    return config


def weight_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from model.safetensors' header: a damaged file is refused here, before a model is built."""
    path = folder / "model.safetensors"
    try:
        with safe_open(str(path), "pt") as weights:
            return {name: list(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise HeadstartError(f"cannot read {path}: {str(err).splitlines()[0][:160]}") from None


def check_classifier(folder: Path, config: HubConfig, shapes: dict[str, list[int]]) -> None:
    """The weights' classifier must give one output per class config.json lists (else labels and outputs misalign)."""
    if config.headstart is not None and config.headstart.layout == "headstart":
        heads = [name for name in shapes if name.startswith("head.") and name.endswith(".weight")]
        key = max(heads, key=lambda n: int(n.split(".")[1]) if n.split(".")[1].isdigit() else -1, default=None)
    else:
        classifier = (config.pretrained_cfg.model_extra or {}).get("classifier")
        key = f"{classifier}.weight" if isinstance(classifier, str) else None
    shape = shapes.get(key) if key else None
    if shape and len(shape) == 2 and shape[0] != config.num_classes:
        raise HeadstartError(
            f"{folder}: the weights' classifier ({key}) has {shape[0]} outputs but config.json lists "
            f"{config.num_classes} classes; the config does not belong to these weights"
        )


def headstart_model(folder: Path, config: HubConfig) -> ModelConfig:
    """The model recipe of a headstart-layout folder, checked as a recipe is, its input bounded as images are."""
    assert config.headstart is not None
    if config.headstart.model.get("backbone") != config.architecture:
        raise HeadstartError(f"{folder / 'config.json'}: headstart.model.backbone is not the architecture")
    try:
        cfg = ModelConfig.model_validate({**config.headstart.model, "weights": "none"})
    except ValidationError as err:
        raise HeadstartError(f"{folder / 'config.json'}: headstart.model: {describe_validation_error(err)}") from None
    size = config.headstart.preprocessing.image_size
    for adapter in cfg.adapters:  # a resize adapter scales the image inside the network
        if isinstance(adapter, ResizeAdapter) and adapter.size is not None:
            size = adapter.size
        elif isinstance(adapter, ResizeAdapter) and adapter.factor is not None:  # it has exactly one of the two
            size = round(size * adapter.factor)
        if size > MAX_IMAGE_SIZE:
            raise HeadstartError(
                f"{folder / 'config.json'}: a resize adapter asks for {size} px (at most {MAX_IMAGE_SIZE})"
            )
    return cfg
