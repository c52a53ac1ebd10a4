"""deploy/predictor.py on tiny hand-made modules: probabilities, top labels, the temperature and test-time flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headstart.core.errors import HeadstartError
from headstart.deploy.predictor import Predictor

# Mean and std of 0.5 map pixels to [-1, 1]; crop_pct 1.0 keeps the whole (square) image.
PREPROCESSING = {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0}
CLASSES = ["left", "right", "neither"]


class LeftRight(nn.Module):
    """Logits from where the image is bright: [left half, right half, a constant]; a mirror image swaps the first two."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        half = batch.shape[-1] // 2
        left = batch[..., :half].mean(dim=(1, 2, 3))
        right = batch[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([4 * left, 4 * right, torch.zeros_like(left)], dim=1)


class Fixed(nn.Module):
    """The same logits for every image."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(batch), -1)


def half_bright(side: str, size: int = 8) -> Image.Image:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    if side == "left":
        pixels[:, : size // 2] = 255
    else:
        pixels[:, size // 2 :] = 255
    return Image.fromarray(pixels)


def noise(seed: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_probabilities_are_one_row_per_image_summing_to_one():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    predictor = Predictor.from_module(module, CLASSES, PREPROCESSING, device="cpu")
    probabilities = predictor.probabilities([noise(seed) for seed in range(5)], batch_size=2)
    assert probabilities.shape == (5, 3)
    assert (probabilities >= 0).all()
    assert probabilities.sum(1).tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    assert predictor.probabilities([]).shape == (0, 3)  # no images: an empty table, not an error


def test_the_bright_side_wins_and_top_labels_are_ordered():
    predictor = Predictor(LeftRight(), CLASSES, PREPROCESSING)
    top = predictor.predict([half_bright("left"), half_bright("right")], top_k=3)
    assert [label for label, _ in top[0]] == ["left", "neither", "right"]
    assert [label for label, _ in top[1]] == ["right", "neither", "left"]
    for row in top:
        values = [p for _, p in row]
        assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(1.0, abs=1e-6)


def test_top_labels_on_hand_made_probabilities():
    predictor = Predictor(Fixed([0.0, 0.0, 0.0]), CLASSES, PREPROCESSING)
    probabilities = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]])
    assert predictor.top_labels(probabilities, 2) == [
        [("right", pytest.approx(0.5)), ("neither", pytest.approx(0.3))],
        [("left", pytest.approx(0.7)), ("neither", pytest.approx(0.2))],
    ]
    assert len(predictor.top_labels(probabilities, 10)[0]) == 3  # k beyond the classes: every class once
    for k in (0, -1, True, 1.5):
        with pytest.raises(HeadstartError, match="top-k"):
            predictor.predict([noise(0)], top_k=k)


def test_the_temperature_divides_the_logits_before_the_softmax():
    logits = [2.0, 1.0, -1.0]
    predictor = Predictor(Fixed(logits), CLASSES, PREPROCESSING)
    image = [noise(0)]
    plain = predictor.probabilities(image)[0]
    assert plain.tolist() == pytest.approx(torch.tensor(logits).softmax(0).tolist(), abs=1e-6)
    predictor.temperature = 2.0
    softened = predictor.probabilities(image)[0]
    assert softened.tolist() == pytest.approx((torch.tensor(logits) / 2.0).softmax(0).tolist(), abs=1e-6)
    assert softened.max() < plain.max() and softened.argmax() == plain.argmax()  # flatter, same decision
    predictor.temperature = 0.5
    assert predictor.probabilities(image)[0].max() > plain.max()


def test_flip_tta_averages_an_image_with_its_mirror_image():
    predictor = Predictor(LeftRight(), CLASSES, PREPROCESSING)
    image = half_bright("left")
    plain = predictor.probabilities([image])[0]
    mirrored = predictor.probabilities([image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])[0]
    flipped = predictor.probabilities([image], tta="flip")[0]
    assert flipped.tolist() == pytest.approx(((plain + mirrored) / 2).tolist(), abs=1e-6)
    # Left and right swap in the mirror image, so the average cannot tell them apart.
    assert flipped[0].item() == pytest.approx(flipped[1].item(), abs=1e-6)
    assert plain[0] > plain[1] and predictor.probabilities([image], tta=True)[0].tolist() == flipped.tolist()


def test_crops_tta_and_unknown_modes():
    predictor = Predictor(LeftRight(), CLASSES, PREPROCESSING)
    crops = predictor.probabilities([noise(1), noise(2)], tta="crops")
    assert crops.shape == (2, 3) and crops.sum(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # Every crop comes with its mirror image, so here too left and right are averaged alike.
    assert crops[:, 0].tolist() == pytest.approx(crops[:, 1].tolist(), abs=1e-6)
    with pytest.raises(HeadstartError, match="unknown test-time augmentation 'spin'"):
        predictor.probabilities([noise(1)], tta="spin")


def test_a_missing_image_is_a_one_line_error(tmp_path):
    predictor = Predictor(LeftRight(), CLASSES, PREPROCESSING)
    with pytest.raises(HeadstartError, match="image not found"):
        predictor.predict([tmp_path / "nope.png"])
    half_bright("right").save(tmp_path / "right.png")
    assert predictor.predict([tmp_path / "right.png"], top_k=1)[0][0][0] == "right"


def test_an_evaluations_figure_says_what_it_scored_and_names_its_file_so(tmp_path, monkeypatch):
    from headstart.core import plots

    folder = tmp_path / "photos"
    for side in ("left", "right"):
        (folder / side).mkdir(parents=True)
        for seed in range(2):
            half_bright(side).save(folder / side / f"{seed}.png")
    titles = []
    monkeypatch.setattr(
        "headstart.deploy.evaluation.plot_confusion",
        lambda matrix, classes, path, title="": (
            titles.append(title) or plots.plot_confusion(matrix, classes, path, title)
        ),
    )
    predictor = Predictor.from_module(LeftRight(), CLASSES, PREPROCESSING, device="cpu")
    plain = predictor.evaluate(folder, confusion_png=tmp_path / "plain.png")
    flipped = predictor.evaluate(folder, confusion_png=tmp_path / "tta.png", tta="flip")
    assert (tmp_path / "plain.png").is_file() and (tmp_path / "tta.png").is_file()
    assert titles[0] == plain.title and "folder photos, no TTA" in titles[0] and "on 4 images" in titles[0]
    assert titles[1] == flipped.title and "folder photos, TTA (flip)" in titles[1]
    assert plain.figure_name == "confusion-folder-photos.png"
    assert flipped.figure_name == "confusion-folder-photos-tta-flip.png"
