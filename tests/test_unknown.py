"""Unknown images: the detector fitted after training, and every way a model is used marks them the same."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import headstart
from headstart.cli import main
from headstart.core.checkpoint import load_checkpoint
from headstart.tasks.unknown import QUANTILE, UnknownDetector, fit_unknown, threshold_for
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images


def clusters(count: int, seed: int, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(centres)
    return centres[labels] + 0.3 * torch.randn(count, centres.shape[1], generator=generator), labels


def test_the_fit_keeps_95_percent_of_known_features_and_flags_far_ones():
    centres = 3 * torch.eye(16)[:3] + 1.0  # three classes, all on one side of the origin (features are ReLU outputs)
    train, labels = clusters(600, 0, centres)
    val, _ = clusters(400, 1, centres)
    detector = fit_unknown(train, labels, val)
    assert detector.val_rate == pytest.approx(1 - QUANTILE, abs=0.01) and detector.val_images == 400
    new_known, _ = clusters(1000, 2, centres)
    assert (detector.score(new_known) > detector.threshold).double().mean() == pytest.approx(0.05, abs=0.03)
    # Elsewhere in feature space: other directions, another class's cluster mixed with noise, a flat vector.
    other_direction, _ = clusters(200, 3, 3 * torch.eye(16)[5:8] + 1.0)
    flat = torch.ones(10, 16)
    assert bool((detector.score(other_direction) > detector.threshold).all())
    assert bool((detector.score(flat) > detector.threshold).all())


def test_the_threshold_is_the_conformal_rank_of_the_val_scores():
    """⌈(n + 1) · 0.95⌉-th smallest: 19 val images leave none above it, 100 leave 4 (not the 95th percentile's 5)."""
    assert threshold_for(torch.arange(1.0, 20.0)) == 19.0
    assert threshold_for(torch.arange(1.0, 101.0)) == 96.0
    assert threshold_for(torch.tensor([3.0])) == 3.0


def test_a_detector_survives_a_weights_only_checkpoint(tmp_path):
    centres = 2 * torch.eye(8)[:2] + 0.5
    train, labels = clusters(100, 0, centres)
    detector = fit_unknown(train, labels, clusters(40, 1, centres)[0])
    torch.save(detector.to_dict(), tmp_path / "d.pt")
    again = UnknownDetector.from_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    probe = torch.randn(5, 8)
    assert torch.equal(again.score(probe), detector.score(probe)) and again.threshold == detector.threshold


def test_features_that_do_not_vary_still_fit():
    """A tiny model's dead ReLU units: a covariance with zero rows must not stop the fit."""
    train = torch.zeros(20, 6)
    train[:, 0] = torch.linspace(1, 2, 20)
    detector = fit_unknown(train, torch.arange(20) % 2, train[:5])
    assert torch.isfinite(detector.score(torch.randn(3, 6))).all()


# ----------------------------------------------------------------------------- a trained run


def foreign_images() -> list[Image.Image]:
    """Noise and flat colours unlike the colour classes' images."""
    rng = np.random.default_rng(7)
    noise = [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(4)]
    return noise + [Image.new("RGB", (24, 24), colour) for colour in ((255, 255, 0), (0, 0, 0), (255, 255, 255))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unknown")
    data = write_images(root / "data", CLASS_COLOURS, per_class=16)
    return headstart.train(tiny_recipe(data, root / "runs"), quiet=True).run_dir, data


def own_and_foreign(data) -> list:
    return [*sorted(data.rglob("*.png"))[::8], *foreign_images()]


def test_training_fits_the_detector_into_best_pt_and_the_summary(run):
    run_dir, _ = run
    fitted = load_checkpoint(run_dir / "best.pt").unknown
    assert fitted is not None and fitted["method"] == "mahalanobis-l2" and fitted["val_images"] == 6
    assert "unknown images: mahalanobis-l2" in (run_dir / "summary.txt").read_text()
    assert f"threshold {fitted['threshold']:.4g}" in (run_dir / "summary.txt").read_text()


def test_predict_marks_foreign_images_and_still_gives_their_top_labels(run):
    run_dir, data = run
    predictions = headstart.load(run_dir, device="cpu").predict(own_and_foreign(data), top_k=2)
    own, foreign = predictions[:6], predictions[6:]
    assert all(len(p) == 2 and p[0][0] in CLASS_COLOURS for p in predictions)
    assert sum(p.unknown for p in own) <= 1 and all(p.unknown for p in foreign)
    assert all(isinstance(p.unknown_score, float) for p in predictions)
    assert [p for p in headstart.load(run_dir, unknown=False).predict(own_and_foreign(data))][0].unknown is None


def test_predict_json_csv_and_text_carry_unknown_and_no_unknown_drops_it(run, tmp_path, capsys):
    run_dir, data = run
    odd = tmp_path / "noise.png"
    foreign_images()[0].save(odd)
    known = sorted((data / "red").iterdir())[0]
    assert main(["predict", str(run_dir), str(known), str(odd), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["unknown"] for e in entries] == [False, True] and entries[1]["top"][0]["label"] in CLASS_COLOURS
    assert main(["predict", str(run_dir), str(known), str(odd), "--csv", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["unknown"] for r in rows] == ["false", "true"] and float(rows[1]["unknown_score"]) > 0
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(known), str(odd)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "UNKNOWN" not in lines[0] and "UNKNOWN (score" in lines[1]
    assert main(["predict", str(run_dir), str(odd), "--json", "--no-unknown"]) == 0
    assert "unknown" not in json.loads(capsys.readouterr().out)[0]


def test_evaluate_reports_the_flagged_rate_and_threshold(run, capsys):
    run_dir, data = run
    assert main(["evaluate", str(run_dir), str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["unknown"]
    threshold = load_checkpoint(run_dir / "best.pt").unknown["threshold"]
    assert report["threshold"] == pytest.approx(threshold) and 0 <= report["rate"] <= 1
    assert main(["evaluate", str(run_dir), str(data)]) == 0
    assert "images flagged" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["onnx", "export", "hub"])
def test_every_export_marks_the_images_the_run_marks(run, tmp_path, fmt):
    run_dir, data = run
    images = own_and_foreign(data)
    expected = headstart.load(run_dir, device="cpu").predict(images)
    exported = headstart.export(
        run_dir, format=fmt, out=tmp_path / {"onnx": "m.onnx", "export": "m.pt2"}.get(fmt, "hub")
    )
    got = headstart.load(exported).predict(images)
    assert [p.unknown for p in got] == [p.unknown for p in expected]
    assert [p.unknown_score for p in got] == pytest.approx([p.unknown_score for p in expected], rel=1e-3)
    assert [p[0][0] for p in got] == [p[0][0] for p in expected]


def test_a_timm_layout_hub_folder_carries_the_detector(data_for_timm, tmp_path):
    recipe = tiny_recipe(
        data_for_timm,
        tmp_path / "runs",
        data={"image_size": 32},
        model={"backbone": "test_resnet", "weights": "none", "backbone_args": {}},
        stages=[{"name": "all", "epochs": 2, "freeze": "none", "lr": 0.01}],
    )
    run_dir = headstart.train(recipe, quiet=True).run_dir
    folder = headstart.export(run_dir, format="hub", out=tmp_path / "hub")
    assert json.loads((folder / "config.json").read_text())["headstart"]["layout"] == "timm"
    assert (folder / "unknown.safetensors").is_file() and "## Unknown images" in (folder / "README.md").read_text()
    images = [*sorted(data_for_timm.rglob("*.png"))[::6], *foreign_images()]
    expected = headstart.load(run_dir, device="cpu").predict(images)
    got = headstart.load(folder).predict(images)
    assert [p.unknown for p in got] == [p.unknown for p in expected]
    assert [p.unknown_score for p in got] == pytest.approx([p.unknown_score for p in expected], rel=1e-3)


@pytest.fixture
def data_for_timm(tmp_path):
    return write_images(tmp_path / "data", CLASS_COLOURS, per_class=8, size=40)


def test_the_server_answers_carry_unknown_unless_turned_off(run):
    from fastapi.testclient import TestClient

    from headstart.deploy.server import create_app

    run_dir, _ = run
    buffer = io.BytesIO()
    foreign_images()[0].save(buffer, "PNG")
    for unknown in (True, False):
        app = create_app(headstart.load(run_dir, device="cpu", unknown=unknown))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            answer = client.post("/predict", content=buffer.getvalue()).json()
            metadata = client.get("/metadata").json()
        assert answer["top"] and (answer.get("unknown") is True) == unknown
        assert ("unknown" in metadata) == unknown


# ----------------------------------------------------------------------------- switches, old runs, bad files


def test_run_unknown_false_fits_nothing(tmp_path):
    data = write_images(tmp_path / "data", CLASS_COLOURS, per_class=6)
    run_dir = headstart.train(tiny_recipe(data, tmp_path / "runs", run={"unknown": False}), quiet=True).run_dir
    assert load_checkpoint(run_dir / "best.pt").unknown is None
    assert headstart.load(run_dir).predict(foreign_images())[0].unknown is None


def test_a_run_killed_before_its_detector_fits_it_when_resumed(run, tmp_path, caplog):
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    best = load_checkpoint(copy / "best.pt")
    fitted, best.unknown = best.unknown, None
    best.save(copy / "best.pt")
    (copy / "summary.txt").unlink()
    with caplog.at_level("INFO", logger="headstart"):
        headstart.train(resume=copy)
    assert "not its unknown-image detector and summary" in caplog.text
    again = load_checkpoint(copy / "best.pt").unknown
    assert again is not None and again["threshold"] == pytest.approx(fitted["threshold"], rel=1e-4)
    assert "unknown images:" in (copy / "summary.txt").read_text()


def test_an_old_checkpoint_has_no_detector_and_predicts_as_before(capsys, tmp_path, monkeypatch):
    from tests.test_legacy_run import FIXTURE

    shutil.copytree(FIXTURE, tmp_path / "run_v1")
    monkeypatch.chdir(tmp_path / "run_v1")
    prediction = headstart.load("runs/tiny").predict(["data/red/000.png"])[0]
    assert prediction.unknown is None and prediction.unknown_score is None
    assert main(["predict", "runs/tiny", "data/red/000.png", "--json"]) == 0
    assert "unknown" not in json.loads(capsys.readouterr().out)[0]


def test_bad_unknown_fields_in_exports_and_hub_folders_are_one_line_errors(run, tmp_path, capsys):
    run_dir, data = run
    image = str(sorted(data.rglob("*.png"))[0])
    model = headstart.export(run_dir, format="export", out=tmp_path / "m.pt2")
    sidecar = tmp_path / "m.pt2.json"
    described = json.loads(sidecar.read_text())
    for bad in (
        {**described, "unknown": {"threshold": "high"}},
        {k: v for k, v in described.items() if k != "unknown"},
    ):
        sidecar.write_text(json.dumps(bad))
        assert main(["predict", str(model), image]) == 2
        err = capsys.readouterr().err
        assert err.startswith("headstart: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    folder = headstart.export(run_dir, format="hub", out=tmp_path / "hub")
    (folder / "unknown.safetensors").write_bytes(b"not a safetensors file")
    assert main(["predict", str(folder), image]) == 2
    err = capsys.readouterr().err
    assert "unknown.safetensors" in err and len(err.strip().splitlines()) == 1
    config = json.loads((folder / "config.json").read_text())
    config["headstart"]["unknown"]["threshold"] = float("nan")
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["predict", str(folder), image]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
