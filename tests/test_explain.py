"""Grad-CAM explanations: the heatmap follows the object, predict/evaluate --explain write their PNGs, refusals."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import headstart
from headstart.core.errors import HeadstartError
from headstart.deploy.predictor import Predictor
from headstart.model.build import Classifier, GlobalAvgPool
from headstart.model.scratch import ScratchCNN
from tests.probes import cli

pytest.importorskip("pytorch_grad_cam")

PREPROCESSING = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def object_detector() -> Classifier:
    """A scratch-CNN classifier built by hand: 'object' rises with bright pixels anywhere, 'blank' falls with them.

    On a black image the conv's output is negative everywhere (ReLU: zero); only the object's pixels pass.
    """
    backbone = ScratchCNN(num_classes=0, widths=(4,), convs_per_block=1, batch_norm=False, dropout=0.0)
    conv = backbone.blocks[0][0]
    head = nn.Sequential(GlobalAvgPool(), nn.Linear(4, 2))
    with torch.no_grad():
        conv.weight.fill_(1 / 27)
        conv.bias.zero_()
        head[1].weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
        head[1].bias.zero_()
    return Classifier(nn.Sequential(), backbone, head, channels_last_output=False).eval()


def square_at(side: str, size: int = 32) -> Image.Image:
    """A white 8x8 square pasted on the left or the right half of a black image."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    left = 3 if side == "left" else size - 11
    pixels[12:20, left : left + 8] = 255
    return Image.fromarray(pixels)


def centre_of_mass_x(heat: np.ndarray) -> float:
    columns = heat.sum(axis=0)
    return float((columns * np.arange(len(columns))).sum() / columns.sum())


def test_the_heatmap_moves_with_the_object(tmp_path):
    predictor = Predictor.from_module(object_detector(), ["object", "blank"], PREPROCESSING, device="cpu")
    left, right = predictor.heatmaps([square_at("left"), square_at("right")])
    assert [m.label for m in left + right] == ["object", "object"]
    assert left[0].heat.shape == right[0].heat.shape == (32, 32)
    assert centre_of_mass_x(left[0].heat) < 12 and centre_of_mass_x(right[0].heat) > 20
    # the hooks are gone afterwards and the model keeps no gradients
    net = predictor.forward
    assert not any(m._forward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    written = predictor.explain([square_at("left"), square_at("right")], tmp_path / "maps", top_k=2)
    assert [p.name for p in written] == ["image-0.png", "image-1.png"]
    assert Image.open(written[0]).width > 2 * 192  # two labels: two panels side by side


def test_predict_explain_writes_one_heatmap_per_image(trained, tmp_path, capsys):
    run_dir, data = trained
    code, out, _ = cli(["predict", run_dir, data / "red", data / "blue", "--explain", tmp_path / "maps"], capsys)
    assert code == 0
    images = sorted((data / "red").glob("*.png")) + sorted((data / "blue").glob("*.png"))
    written = sorted((tmp_path / "maps").iterdir())
    # red/000.png and blue/000.png share a stem: the second is 000-2.png, nothing is overwritten
    assert len(written) == len(images) and all(p.suffix == ".png" for p in written)
    assert f"{len(images)} heatmap(s) written" in out
    code, _, _ = cli(
        ["predict", run_dir, data / "red" / "000.png", "--top-k", "2", "--explain", tmp_path / "k2"], capsys
    )
    (strip,) = (tmp_path / "k2").iterdir()
    single = Image.open(written[0])
    assert code == 0 and Image.open(strip).width > 1.5 * single.width  # a panel per label
    code, out, _ = cli(["predict", run_dir, data / "red" / "000.png", "--tta", "--explain", tmp_path / "t"], capsys)
    assert code == 0 and "captions' probabilities are without --tta" in out  # the printed ones are with it


def test_evaluate_explain_draws_the_mistakes_grid(trained, tmp_path, capsys):
    run_dir, data = trained
    # Labels swapped: every confident prediction is a mistake, so the grid has something to show.
    swapped = tmp_path / "swapped"
    shutil.copytree(data / "blue", swapped / "red")
    shutil.copytree(data / "red", swapped / "blue")
    args = ["evaluate", run_dir, swapped, "--confusion", tmp_path / "c.png", "--explain", tmp_path / "grid"]
    code, out, _ = cli(args, capsys)
    assert code == 0
    (grid,) = (tmp_path / "grid").iterdir()
    assert grid.name.startswith("mistakes-") and f"most confident mistakes: {grid}" in out
    assert Image.open(grid).width >= 4 * 192  # four columns of panels


def test_a_model_without_pytorch_layers_is_refused_in_one_line(trained, tmp_path, capsys):
    predictor = Predictor(lambda batch: batch.mean(dim=(2, 3))[:, :2], ["a", "b"], PREPROCESSING)
    with pytest.raises(HeadstartError, match="run folders, checkpoints and Hub folders can explain"):
        predictor.explain([square_at("left")], tmp_path / "maps")
    exported = headstart.export(trained[0], format="export", out=tmp_path / "model.pt2")
    image = trained[1] / "red" / "000.png"
    code, out, err = cli(["predict", exported, image, "--explain", tmp_path / "maps"], capsys)
    assert code == 2 and "cannot be explained" in err and "Hub folders can explain" in err
    assert out == "" and not (tmp_path / "maps").exists()  # refused before anything was predicted
    (tmp_path / "a-file").write_text("")
    for command in (["predict", trained[0], image], ["evaluate", trained[0], trained[1]]):
        code, out, err = cli([*command, "--explain", tmp_path / "a-file"], capsys)
        assert code == 2 and "a-file: that is a file; give a folder for the heatmaps" in err and out == ""


def test_serve_explain_answers_the_heatmap_png(trained, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from headstart.deploy.server import create_app
    from tests.test_serve import BAD_UPLOADS, LOCAL

    run_dir, data = trained
    image = data / "red" / "000.png"
    predictor = headstart.load(run_dir, device="cpu")
    (expected,) = predictor.explain([image], tmp_path / "maps")
    upload = {"file": ("000.png", image.read_bytes(), "image/png")}
    with TestClient(create_app(predictor), base_url=LOCAL) as client:
        answer = client.post("/explain", files=upload)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        drawn = np.asarray(Image.open(io.BytesIO(answer.content)))
        assert np.array_equal(drawn, np.asarray(Image.open(expected)))  # what predict --explain draws
        other = predictor.predict([image], top_k=2)[0][1][0]  # the less probable label, asked for by name
        asked = client.post("/explain", files=upload, params={"label": other})
        assert asked.status_code == 200 and not np.array_equal(np.asarray(Image.open(io.BytesIO(asked.content))), drawn)
        assert client.post("/explain", files=upload, params={"label": "cat"}).status_code == 400
        refused = client.post("/explain", files={"file": ("x", BAD_UPLOADS["truncated"][0], "image/png")})
        assert refused.status_code == 422 and "cannot decode" in refused.json()["detail"]
        assert "if (!true) return;" in client.get("/").text  # the page asks for heatmaps
    exported = headstart.export(run_dir, format="export", out=tmp_path / "model.pt2")
    with TestClient(create_app(headstart.load(exported)), base_url=LOCAL) as client:
        answer = client.post("/explain", files=upload)
        assert answer.status_code == 501 and "Hub folders can explain" in answer.json()["detail"]
        assert "if (!false) return;" in client.get("/").text  # ... and of an exported model, does not


def test_heatmap_file_names_never_repeat():
    from headstart.deploy.explain import file_names

    names = file_names(["x/a-2.jpg", "x/a.jpg", "x/a.png", "y/a.jpg", ""])
    assert names == ["a-2.png", "a.png", "a-3.png", "a-4.png", "image.png"]
    assert len(set(file_names(["a-2.jpg", "a.jpg", "a.png"]))) == 3  # a.png's -2 would overwrite a-2.jpg's
