"""prepare(recipe) -> Session: what every command that runs a model needs, built once and the same way.

A Session holds the resolved recipe, the hardware choice, the process group (one process, or one
of many under torchrun/accelerate), the decoded data splits, the model on its device and one
freeze plan per stage (each checked before anything trains or is written). `train` runs stages
over it; `lr_find` runs one stage's loop with an LR ramp over it.

Example:
    >>> from headstart.training.session import prepare, open_hardware
    >>> hw, group = open_hardware(recipe)
    >>> session = prepare(recipe, hw, group)
    >>> session.model, session.plans[0].start
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from headstart.config.duration import parse_duration
from headstart.config.recipe import Recipe
from headstart.core.distributed import SOLO, Group, join, leave
from headstart.core.errors import HeadstartError
from headstart.core.hardware import Hardware, busy_cpu_note, cores_busy_elsewhere, load_average, pick_hardware
from headstart.data.balance import choose_balance
from headstart.data.duplicates import warn_duplicates
from headstart.data.images import PreparedData, prepare_data
from headstart.data.layouts import list_images
from headstart.model.build import Classifier, build_model, resolve_preprocessing
from headstart.model.freeze import FreezePlan, plan_stages
from headstart.model.weights import default_source
from headstart.tasks.metrics import choose_monitor
from headstart.tasks.registry import Task, task_named
from headstart.training.precision import candidates, measured
from headstart.training.pseudo_labels import PseudoLabels, pseudo_label

log = logging.getLogger("headstart")


@dataclass
class Session:
    recipe: Recipe
    hw: Hardware
    group: Group
    data: PreparedData
    model: Classifier
    plans: list[FreezePlan]
    # How the precision and layout were chosen, where they were measured (training.precision).
    hardware_note: str = ""
    # What data.unlabeled's images gave (training.pseudo_labels); None without unlabelled images.
    pseudo: PseudoLabels | None = None
    # When run.budget runs out (time.perf_counter()), counted from the start of prepare(); None: no budget.
    deadline: float | None = None

    @property
    def classes(self) -> list[str]:
        return self.data.split.classes

    @property
    def task(self) -> Task:
        """What a label is for this data: the one object training and scoring ask (tasks.registry)."""
        return task_named(self.data.split.task)


def resolve(recipe: Recipe) -> Recipe:
    """Fill what the recipe left to defaults that depend on other fields, so the saved recipe says what ran."""
    resolved = recipe.model_copy(deep=True)
    if resolved.model.weights is None:
        resolved.model.weights = default_source(resolved.model.backbone)
    return resolved


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def ensure_console(quiet: bool) -> None:
    """A library user gets epoch lines on stdout unless they configured logging themselves or asked for quiet."""
    if quiet:
        log.setLevel(logging.WARNING)
        return
    log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)


def open_hardware(recipe: Recipe) -> tuple[Hardware, Group]:
    """The device and precision, and this process's place in a data-parallel group (SOLO without a launcher)."""
    hw = pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last is not False)
    group = join(hw.device.type)
    if group.active and hw.device.type == "cuda":
        if group.local_rank >= torch.cuda.device_count():
            leave(group)
            raise HeadstartError(
                f"{group.world} processes on this machine but {torch.cuda.device_count()} CUDA GPU(s): "
                "one process per GPU, or --device cpu for CPU processes"
            )
        hw = replace(hw, device=torch.device("cuda", group.local_rank))
        torch.cuda.set_device(hw.device)
    return hw, group


def warn_if_cpu_busy(hw: Hardware, group: Group) -> None:
    """Say so when a CPU run starts on cores other processes already keep busy (its timings will not compare)."""
    if hw.device.type != "cpu" or not group.is_main:
        return
    load, measure, cores = load_average(), "load average", os.cpu_count()
    if busy_cpu_note(load, cores, 1) is not None:  # high, but maybe from this process's own last run: look now
        elsewhere = cores_busy_elsewhere()
        load, measure = (load, measure) if elsewhere is None else (elsewhere, "cores busy in other processes")
    note = busy_cpu_note(load, cores, torch.get_num_threads() * group.world, measure)
    if note:
        log.warning(note)


def prepare(recipe: Recipe, hw: Hardware | None = None, group: Group = SOLO, *, check_data: bool = True) -> Session:
    """Seed, list/split/decode the data, build the model and every stage's freeze plan; model on its device.

    check_data: warn about duplicate files and leaks across splits (a resumed run already did).
    The balance remedy and monitor chosen for the data are written into the recipe, so the saved recipe says what ran.
    """
    started = time.perf_counter()
    hw = hw or pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last is not False)
    seed_everything(recipe.run.seed, recipe.run.deterministic)
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    with group.main_first():
        split = list_images(recipe.data)
        pseudo = pseudo_label(split, recipe, preprocessing, hw) if recipe.data.unlabeled else None
        split.train.extend(pseudo.samples if pseudo else [])
        data = prepare_data(recipe.data, preprocessing, on_disk=group.active, split=split)
    if group.is_main and check_data:
        warn_duplicates({"train": data.split.train, "val": data.split.val, "test": data.split.test}, recipe.data.path)
    recipe.run.monitor = choose_monitor(recipe.run.monitor, task_named(data.split.task))
    recipe.data.balance = choose_balance(recipe.data.balance, data.train.labels, data.split.classes, data.split.task)
    model = build_model(recipe.model, len(data.split.classes), preprocessing["image_size"])
    # Every stage's freeze point is checked before anything trains or is written.
    plans = plan_stages(model, recipe.stages)
    model.to(hw.device)
    options = candidates(recipe.run.precision, recipe.run.channels_last) if hw.device.type == "cpu" else []
    note = ""
    if len(options) > 1:
        hw, note = measured(model, hw, preprocessing["image_size"], recipe.model.backbone, options, group)
        log.info(note)
    elif hw.channels_last:
        model.to(memory_format=torch.channels_last)
    deadline = None if recipe.run.budget is None else started + parse_duration(recipe.run.budget, "run.budget")
    return Session(recipe, hw, group, data, model, plans, note, pseudo, deadline)
