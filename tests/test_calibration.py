"""Temperature scaling: fitted on val after training, stored with the model, used by every way predictions leave."""

import json

import pytest
import torch
import torch.nn.functional as F

import headstart
from headstart.cli import main
from headstart.core.checkpoint import load_checkpoint
from headstart.tasks.calibration import calibrate, expected_calibration_error, fit_temperature, reliability
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
    assert found.applied and found.cv_nll_fitted < found.cv_nll_plain
    assert found.temperature == pytest.approx(5, rel=0.15)
    assert "under 5-fold cross-validation" in found.summary_line()
    assert found.nll_after < found.nll_before - 0.5
    assert found.ece_after < found.ece_before / 3
    # The argmax never changes: accuracy is the same before and after.
    assert torch.equal((over_confident / found.temperature).argmax(1), over_confident.argmax(1))


def test_a_calibrated_model_keeps_a_temperature_near_one():
    logits, labels = synthetic(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1, abs=0.1)
    assert expected_calibration_error(logits.softmax(1), labels) < 0.05
    assert fit_temperature(logits[:1], labels[:1]) == 1.0  # nothing to fit on one image


def test_a_temperature_that_does_not_lower_held_out_nll_is_not_applied():
    logits, labels = synthetic(seed=1)  # calibrated by construction: a fitted T only fits the noise
    found = calibrate(logits, labels)
    assert not found.applied and found.temperature == 1.0 and found.cv_nll_fitted >= found.cv_nll_plain
    assert found.nll_after == found.nll_before and found.ece_after == found.ece_before
    assert "did not lower the held-out NLL under 5-fold cross-validation" in found.reason
    assert found.summary_line().startswith("calibration: temperature kept at 1 (none applied): a fitted")


def test_a_small_noisy_val_split_keeps_t_at_one_and_says_why():
    logits, labels = synthetic(n=60, seed=0)
    found = calibrate(logits, labels)  # fitted on all 60 the temperature is 1.22: noise
    assert found.fitted != 1.0 and not found.applied and found.temperature == 1.0
    assert "did not lower the held-out NLL" in found.reason
    tiny = calibrate(*synthetic(n=12, seed=0))
    assert not tiny.applied and "12 val images are too few" in tiny.reason and tiny.folds == 0


@pytest.mark.parametrize("images", [153, 100, 37])
def test_reliability_bins_hold_near_equal_counts(images):
    logits, labels = synthetic(n=images, seed=2)
    table = reliability((logits * 3).softmax(1), labels)
    assert sum(table["count"]) == images and max(table["count"]) - min(table["count"]) <= 1
    assert min(table["count"]) >= 10 or len(table["count"]) == 1
    assert table["confidence"] == sorted(table["confidence"])


def test_the_reliability_diagram_marks_each_bins_count(monkeypatch, tmp_path):
    from headstart.core import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or path)
    logits, labels = synthetic(n=100, seed=2)
    kept = calibrate(logits, labels)
    plots.plot_reliability(kept, tmp_path / "r.png")
    axis = figures[0].axes[0]
    assert [text.get_text() for text in axis.texts] == ["10"] * 10
    assert "no temperature applied" in axis.get_title() and "100 val images, 10 bins" in axis.get_title()
    assert len(axis.lines) == 2  # the diagonal and the curve at T = 1: no "after" curve for a temperature not applied
    plots.plot_reliability(calibrate(logits * 5, labels), tmp_path / "r.png")
    assert len(figures[1].axes[0].lines) == 3 and "no temperature" not in figures[1].axes[0].get_title()


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    from tests.conftest import CLASS_COLOURS, write_images

    root = tmp_path_factory.mktemp("calibrated")
    folder = write_images(root / "colours", CLASS_COLOURS, per_class=12)
    return headstart.train(tiny_recipe(folder, root / "runs"), quiet=True).run_dir, folder


def test_training_stores_the_temperature_plot_and_summary_line(calibrated_run):
    run_dir, _ = calibrated_run
    best = load_checkpoint(run_dir / "best.pt")
    # Three val images: too few to tell whether a temperature helps, so none is applied, and the summary says why.
    assert best.temperature is None and best.calibration["images"] == 3 and not best.calibration["applied"]
    assert best.calibration["nll_after"] <= best.calibration["nll_before"] + 1e-9
    assert (run_dir / "reliability.png").stat().st_size > 1000
    assert "calibration: temperature kept at 1 (none applied): 3 val images" in (run_dir / "summary.txt").read_text()
    page = headstart.report(run_dir).read_text()
    assert "Calibration" in page and "ECE" in page


@pytest.fixture(scope="module")
def run_with_temperature(calibrated_run, tmp_path_factory):
    """The calibrated run as if cross-validation had applied a temperature of 1.7."""
    import shutil

    from tests.conftest import with_temperature

    run_dir = tmp_path_factory.mktemp("tempered") / "run"
    shutil.copytree(calibrated_run[0], run_dir)
    return with_temperature(run_dir), calibrated_run[1]


def test_predict_divides_by_the_temperature_and_keeps_the_argmax(run_with_temperature):
    run_dir, folder = run_with_temperature
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


def test_an_onnx_export_carries_and_applies_the_temperature(run_with_temperature, tmp_path):
    pytest.importorskip("onnxruntime")
    run_dir, folder = run_with_temperature
    target = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(target)]) == 0
    temperature = load_checkpoint(run_dir / "best.pt").temperature
    described = json.loads((tmp_path / "m.onnx.json").read_text())
    assert described["temperature"] == temperature and described["temperature_applied"] is True
    exported = headstart.load(target)
    assert exported.temperature is None  # folded into the output layer: dividing again would double it
    image = [headstart.deploy.predictor._open(sorted((folder / "blue").iterdir())[0])]
    assert torch.allclose(exported.probabilities(image), headstart.load(run_dir).probabilities(image), atol=1e-3)
