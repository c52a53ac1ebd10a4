"""Temperature scaling: fitted on val after training, stored with the model, used by every way predictions leave."""

import json

import pytest
import torch
import torch.nn.functional as F

import headstart
from headstart.cli import main
from headstart.core.checkpoint import load_checkpoint
from headstart.tasks.calibration import calibrate, expected_calibration_error, fit_temperature
from tests.conftest import tiny_recipe


def synthetic(n=3000, classes=5, seed=0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_temperature_scaling_lowers_nll_and_ece_of_an_over_confident_model():
    logits, labels = synthetic()
    over_confident = logits * 5  # same predictions, five times too sure
    found = calibrate(over_confident, labels)
    assert found.temperature == pytest.approx(5, rel=0.15)
    assert found.nll_after < found.nll_before - 0.5
    assert found.ece_after < found.ece_before / 3
    # The argmax never changes: accuracy is the same before and after.
    assert torch.equal((over_confident / found.temperature).argmax(1), over_confident.argmax(1))


def test_a_calibrated_model_keeps_a_temperature_near_one():
    logits, labels = synthetic(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1, abs=0.1)
    assert expected_calibration_error(logits.softmax(1), labels) < 0.05
    assert fit_temperature(logits[:1], labels[:1]) == 1.0  # nothing to fit on one image


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    from tests.conftest import CLASS_COLOURS, write_images

    root = tmp_path_factory.mktemp("calibrated")
    folder = write_images(root / "colours", CLASS_COLOURS, per_class=12)
    return headstart.train(tiny_recipe(folder, root / "runs"), quiet=True).run_dir, folder


def test_training_stores_the_temperature_plot_and_summary_line(calibrated_run):
    run_dir, _ = calibrated_run
    best = load_checkpoint(run_dir / "best.pt")
    assert best.temperature > 0 and best.calibration["images"] > 0
    assert best.calibration["nll_after"] <= best.calibration["nll_before"] + 1e-9
    assert (run_dir / "reliability.png").stat().st_size > 1000
    assert "calibration: temperature" in (run_dir / "summary.txt").read_text()
    page = headstart.report(run_dir).read_text()
    assert "Calibration" in page and "ECE" in page


def test_predict_divides_by_the_temperature_and_keeps_the_argmax(calibrated_run):
    run_dir, folder = calibrated_run
    predictor = headstart.load(run_dir)
    temperature = load_checkpoint(run_dir / "best.pt").temperature
    assert predictor.temperature == temperature
    images = sorted((folder / "red").iterdir())[:4]
    calibrated = predictor.probabilities([headstart.deploy.predictor._open(p) for p in images])
    predictor.temperature = None
    raw = predictor.probabilities([headstart.deploy.predictor._open(p) for p in images])
    assert torch.equal(calibrated.argmax(1), raw.argmax(1))
    assert not torch.allclose(calibrated, raw)
    assert torch.allclose(calibrated, F.softmax(torch.log(raw) / temperature, 1), atol=1e-4)


def test_an_onnx_export_carries_and_applies_the_temperature(calibrated_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run_dir, folder = calibrated_run
    target = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(target)]) == 0
    temperature = load_checkpoint(run_dir / "best.pt").temperature
    assert json.loads((tmp_path / "m.onnx.json").read_text())["temperature"] == temperature
    exported = headstart.load(target)
    assert exported.temperature == temperature
    image = [headstart.deploy.predictor._open(sorted((folder / "blue").iterdir())[0])]
    assert torch.allclose(exported.probabilities(image), headstart.load(run_dir).probabilities(image), atol=1e-3)
