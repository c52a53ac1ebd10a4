"""Export: ONNX (run by onnxruntime) and torch.export agree with PyTorch; predict works on the exported files."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import headstart
from headstart.cli import main
from headstart.core.checkpoint import load_checkpoint
from headstart.deploy.loading import load
from headstart.deploy.unknown import split_outputs
from headstart.model.build import model_from_checkpoint
from tests.conftest import tiny_recipe


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """The packaged default backbone after a one-epoch head stage: real weights, real ops (TF 'same' padding)."""
    from tests.conftest import train_lite0_head

    return train_lite0_head(tmp_path_factory.mktemp("export"))


def real_images() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())]


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "export"])
def test_exported_model_matches_pytorch_on_real_images(lite0_run, fmt):
    run_dir, _ = lite0_run
    path = headstart.export(run_dir, format=fmt)
    assert path.is_file() and json.loads((path.parent / f"{path.name}.json").read_text())["runtime"] == fmt
    original = load(run_dir, device="cpu")
    exported = load(path)
    batch = torch.stack([original.transform(image) for image in real_images()])
    with torch.no_grad():
        reference = model_from_checkpoint(load_checkpoint(run_dir))(batch)
    got, score = split_outputs(exported.forward(batch))
    assert got.shape == reference.shape == (3, 3)
    assert (got - reference).abs().max().item() < 1e-4
    # the graph's second output is the run's unknown-image score, and both mark the same images
    assert score is not None and score.shape == (3,)
    with torch.no_grad():
        assert score == pytest.approx(split_outputs(original.forward(batch))[1], rel=1e-3)
    for mine, theirs in zip(exported.predict(real_images()), original.predict(real_images())):
        assert [label for label, _ in mine] == [label for label, _ in theirs]
        assert [p for _, p in mine] == pytest.approx([p for _, p in theirs], abs=1e-4)
        assert mine.unknown == theirs.unknown is not None


@pytest.mark.slow
def test_predict_on_exported_model_writes_csv(lite0_run, tmp_path, capsys):
    run_dir, folder = lite0_run
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (
        main(
            ["predict", str(tmp_path / "m.onnx"), str(folder / "red"), "--csv", str(tmp_path / "p.csv"), "--top-k", "2"]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    columns = {"image", "label", "probability", "label_2", "probability_2", "unknown", "unknown_score"}
    assert len(rows) == 8 and set(rows[0]) == columns
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in rows)
    from_checkpoint = headstart.load(run_dir).predict(sorted((folder / "red").iterdir()), top_k=1)
    assert [r["label"] for r in rows] == [top[0][0] for top in from_checkpoint]


def test_exported_file_without_its_description_is_refused(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"not really")
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path)]) == 2
    assert "no m.onnx.json beside it" in capsys.readouterr().err


def test_tta_averages_the_image_and_its_mirror(colour_folder, tmp_path, capsys):
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs"), quiet=True)
    predictor = headstart.load(result.run_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    plain = predictor.probabilities([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert torch.allclose(predictor.probabilities([image], tta=True)[0], plain.mean(0), atol=1e-6)

    assert main(["evaluate", str(result.run_dir), str(colour_folder), "--tta", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy_without_tta"] == pytest.approx(predictor.evaluate(colour_folder).accuracy)


def test_tta_crops_average_ten_views(colour_folder, tmp_path):
    from headstart.deploy.tta import ten_crops

    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", data={"crop_pct": 0.75}), quiet=True)
    predictor = headstart.load(result.run_dir)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    views = ten_crops(predictor.preprocessing)(image)
    assert views.shape == (10, 3, 16, 16)
    # The second five are crops of the mirror image: its top-left corner is the top-right one mirrored.
    assert torch.equal(views[5], views[1].flip(2)) and torch.equal(views[6], views[0].flip(2))
    expected = predictor.to_probabilities(split_outputs(predictor.forward(views))[0]).mean(
        0
    )  # with the run's fitted temperature
    assert torch.allclose(predictor.probabilities([image], tta="crops")[0], expected, atol=1e-6)
    assert headstart.load(result.run_dir).evaluate(colour_folder, tta="crops").tta == "crops"


def test_an_export_description_names_no_local_path(trained, tmp_path):
    """A file meant for sharing: the description says which run it came from, not where that run lives."""
    path = headstart.export(trained[0], format="export", out=tmp_path / "shared" / "model.pt2")
    text = (path.parent / "model.pt2.json").read_text()
    assert str(trained[0].parent) not in text and str(Path.home()) not in text
    assert json.loads(text)["checkpoint"] == f"{trained[0].name}/best.pt"


# Runs where importing headstart fails: only onnxruntime or torch.export read the file.
RUNTIME_ALONE = """
import json, sys
sys.modules["headstart"] = None
import numpy as np, torch
model_file, batch = sys.argv[1], np.load(sys.argv[2])
if model_file.endswith(".onnx"):
    import onnxruntime
    logits = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"]).run(None, {"image": batch})[0]
    logits = torch.from_numpy(logits)
else:
    logits = torch.export.load(model_file).module()(torch.from_numpy(batch))[0]  # (logits, unknown score)
print(json.dumps(logits.softmax(1).tolist()))
"""


@pytest.mark.parametrize("fmt", ["onnx", "export"])
def test_an_export_alone_gives_the_calibrated_probabilities(trained, tmp_path, fmt):
    """The temperature is folded into the output layer: a runtime with no headstart matches headstart predict."""
    import subprocess
    import sys

    from tests.conftest import with_temperature

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    with_temperature(run, 2.5)
    path = headstart.export(run, format=fmt, out=tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt2"))
    assert json.loads((path.parent / f"{path.name}.json").read_text())["temperature_applied"] is True
    predictor = headstart.load(run, device="cpu")
    images = sorted(trained[1].rglob("*.png"))[:6]
    batch = torch.stack([predictor.transform(Image.open(p).convert("RGB")) for p in images]).numpy()
    np.save(tmp_path / "batch.npy", batch)
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_ALONE, str(path), str(tmp_path / "batch.npy")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    alone = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    expected = predictor.probabilities([Image.open(p).convert("RGB") for p in images])
    assert (alone - expected).abs().max().item() < 1e-3
    # headstart loading the export applies no second division
    again = headstart.load(path).probabilities([Image.open(p).convert("RGB") for p in images])
    assert (again - expected).abs().max().item() < 1e-4
