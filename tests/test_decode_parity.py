"""One answer for one file: predict, the Python API, serve, ONNX and a Hub folder decode the same way.

Phone photos carry EXIF orientation, PNGs carry alpha, scans are 16-bit: each file below is
decoded differently by a plain `convert("RGB")`, and every entry point must give the answer
`headstart predict` gives.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import headstart
from headstart.cli import main
from headstart.deploy.server import create_app
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A run whose flatten-dense head sees where things are (a rotation changes its answer), and its exports."""
    root = tmp_path_factory.mktemp("parity")
    data = write_images(root / "data", CLASS_COLOURS, per_class=8)
    model = {"head": {"kind": "flatten-dense", "hidden": 8}}
    run = headstart.train(tiny_recipe(data, root / "runs", model=model), quiet=True).run_dir
    onnx = headstart.export(run, format="onnx", out=root / "model.onnx")
    hub = headstart.export(run, format="hub", out=root / "hub")
    return run, onnx, hub


def exif_rotated_jpeg(path):
    """Left third red, the rest blue, stored sideways with EXIF orientation 6 (rotate on display)."""
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :20] = (230, 20, 20)
    pixels[:, 20:] = (20, 20, 230)
    pixels[:10, 20:40] = (20, 220, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())


def transparent_png(path):
    """Red pixels under alpha 0 on the left half: shown as white there, not red."""
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[..., 0] = 230
    pixels[..., 3] = 255
    pixels[:, :16, 3] = 0
    pixels[:, 16:, :3] = (20, 20, 230)
    Image.fromarray(pixels, "RGBA").save(path)


def sixteen_bit_png(path):
    """A dark 16-bit grey ramp: convert("RGB") clips it to white; scaled, it stays dark."""
    ramp = np.tile(np.linspace(0, 6000, 32, dtype=np.uint16), (32, 1))
    Image.fromarray(ramp).save(path)  # uint16 becomes mode I;16


FILES = {"exif.jpg": exif_rotated_jpeg, "alpha.png": transparent_png, "sixteen.png": sixteen_bit_png}


def as_probabilities(entry: dict) -> dict[str, float]:
    return {item["label"]: item["probability"] for item in entry["top"]}


@pytest.mark.parametrize("name", FILES)
def test_every_entry_point_gives_predicts_answer(exports, tmp_path, capsys, name):
    run, onnx, hub = exports
    path = tmp_path / name
    FILES[name](path)
    assert main(["predict", str(run), str(path), "--json", "--top-k", "3"]) == 0
    expected = as_probabilities(json.loads(capsys.readouterr().out)[0])

    predictor = headstart.load(run, device="cpu")
    answers = {"api": dict(predictor.predict([path], top_k=3)[0])}
    with TestClient(create_app(predictor), base_url="http://127.0.0.1") as client:
        upload = client.post("/predict", params={"top_k": 3}, files={"file": (name, path.read_bytes(), "image/png")})
        answers["serve"] = as_probabilities(upload.json())
    answers["onnx"] = dict(headstart.load(onnx).predict([path], top_k=3)[0])
    answers["hub"] = dict(headstart.load(hub, device="cpu").predict([path], top_k=3)[0])
    for where, got in answers.items():
        assert got.keys() == expected.keys(), where
        assert max(abs(got[k] - expected[k]) for k in got) < 1e-4, (where, got, expected)

    # The file is one a plain convert('RGB') (the server's old decode) reads differently: the parity is no chance.
    with Image.open(io.BytesIO(path.read_bytes())) as opened:
        naive = predictor.batch_probabilities(predictor.transform(opened.convert("RGB"))[None])[0]
    careful = torch.tensor([expected[label] for label in predictor.classes])
    assert (naive - careful).abs().max().item() > 1e-3
