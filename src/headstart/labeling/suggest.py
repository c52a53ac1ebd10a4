"""headstart suggest: rank a folder's unlabelled images for labelling and write to_label.csv and to_label.html.

Without a run (nothing labelled yet) the picks are typical images of k-means clusters of the
embeddings; with a run, the images its calibrated model is least sure of, spread over clusters
(labeling.choose). to_label.csv's label column is left for the person labelling; filled in, it goes
back to `headstart train DATA --add-labeled to_label.csv` (or, from a cold start, is the data itself).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.hardware import pick_hardware
from headstart.core.paths import user_path
from headstart.data.layouts import list_images
from headstart.data.unlabeled import drop_known, list_unlabeled
from headstart.labeling.choose import margins, typical, uncertain_and_diverse
from headstart.labeling.sheet import Pick, SuggestResult, write_sheet
from headstart.model.build import resolve_preprocessing
from headstart.training.embeddings import Embedder
from headstart.training.session import ensure_console, resolve

log = logging.getLogger("headstart")


def embedding_recipe(recipe: dict | None, backbone: str, batch_size: int, device: str) -> Recipe:
    """The run's backbone (its pretrained weights, linear head, no augmentation), or `backbone` without a run."""
    values: dict[str, Any] = (
        {"model": {"backbone": backbone}} if recipe is None else {"data": recipe["data"], "model": recipe["model"]}
    )
    values["model"] = {**values["model"], "head": {"kind": "linear"}}
    values["data"] = {**values.get("data", {}), "augment": "none", "batch_size": batch_size, "unlabeled": None}
    values["run"] = {"device": device}
    return resolve(Recipe.from_dict(values))


def not_labelled_yet(paths: list[Path], recipe: dict | None, folder: str) -> list[Path]:
    """Drop the images the run's data set labels already (where that data can still be listed)."""
    if recipe is None:
        return paths
    try:
        split = list_images(Recipe.from_dict({"data": recipe["data"]}).data)
    except HeadstartError as err:
        log.warning("the run's data set cannot be listed (%s): its labelled images are not left out", err)
        return paths
    return drop_known(paths, split, folder, why="as images the data set labels already").paths


def default_out(folder: str | Path) -> Path:
    """runs/<folder>-suggest, the folder named as it is ('.' by the folder it names, a CSV by its stem)."""
    path = Path(os.path.abspath(user_path(folder)))
    return Path("runs") / f"{path.stem if path.suffix.lower() == '.csv' else path.name}-suggest"


def suggest(
    folder: str | Path,
    budget: int,
    run: str | Path | None = None,
    out: str | Path | None = None,
    *,
    backbone: str = "tf_efficientnet_lite0",
    batch_size: int = 64,
    device: str = "auto",
    seed: int = 0,
    quiet: bool = False,
) -> SuggestResult:
    """Pick `budget` images of FOLDER to label next; with `run`, those its model is least sure of (spread out)."""
    ensure_console(quiet)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise HeadstartError(f"budget {budget!r}: give the number of images to label, 1 or more")
    predictor = None
    if run is not None:
        from headstart.deploy.loading import load  # sklearn's metrics load only when needed

        predictor = load(run, device=device, unknown=False)
        if predictor.task.name != "single-label":
            raise HeadstartError(f"suggest ranks images for single-label models; {run} is {predictor.task.name}")
    recipe = predictor.recipe if predictor else None
    paths = not_labelled_yet(list_unlabeled(folder), recipe, str(folder))
    if budget > len(paths):
        raise HeadstartError(f"budget {budget} is larger than the {len(paths)} unlabelled images in {folder}")
    embedding = embedding_recipe(recipe, backbone, batch_size, device)
    preprocessing = resolve_preprocessing(embedding.data, embedding.model)
    vectors, ok = Embedder(embedding, preprocessing, pick_hardware(device, "auto", True)).files(paths, quiet)
    readable = np.nonzero(ok)[0]
    if budget > len(readable):
        raise HeadstartError(f"budget {budget} is larger than the {len(readable)} readable images in {folder}")
    vectors = np.asarray(vectors[readable], dtype=np.float32)
    paths = [paths[i] for i in readable]
    if predictor is None:
        picks = [Pick(paths[row], why) for row, why in typical(vectors, budget, seed)]
    else:
        probabilities = predictor.outputs_of(paths)[0].numpy()
        chosen = uncertain_and_diverse(vectors, probabilities, predictor.classes, budget, seed)
        _, order = margins(probabilities)
        picks = [
            Pick(paths[row], why, predictor.classes[order[row, 0]], float(probabilities[row, order[row, 0]]))
            for row, why in chosen
        ]
    target = user_path(out) if out is not None else default_out(folder)
    result = SuggestResult(target, picks, len(paths))
    write_sheet(result, folder, run, recipe["data"] if recipe else None)
    log.info(
        "%d of %d images to label: %s (fill in its label column), %s", len(picks), len(paths), result.csv, result.html
    )
    return result
