"""Mobile formats: LiteRT (.tflite, run here by ai-edge-litert) predicts as the run does; Core ML (.mlpackage, which
only Apple's systems run) is checked by its spec. Both carry the classes and preprocessing inside the file."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import headstart
from headstart.core.errors import HeadstartError
from headstart.deploy.loading import load
from headstart.deploy.writing import sidecar_path
from headstart.tasks.unknown import UnknownScore, UnknownScore32
from tests.conftest import CLASS_COLOURS, train_lite0_head, write_images

FIXTURE = Path(__file__).parent / "fixtures" / "tflite"  # made by fixtures/make_tflite.py


def images(root: Path) -> list[Path]:
    folder = write_images(root, CLASS_COLOURS, per_class=2, size=40, seed=7)
    return sorted(folder.rglob("*.png"))


def assert_same_predictions(exported, original, pictures, tolerance=1e-3):
    for mine, theirs in zip(exported.predict(pictures, top_k=3), original.predict(pictures, top_k=3), strict=True):
        assert [label for label, _ in mine] == [label for label, _ in theirs]
        assert [p for _, p in mine] == pytest.approx([p for _, p in theirs], abs=tolerance)
        assert mine.unknown == theirs.unknown is not None
        assert mine.unknown_score == pytest.approx(theirs.unknown_score, rel=1e-3)


def test_the_float32_unknown_score_matches_the_float64_one():
    generator = torch.Generator().manual_seed(0)
    whitening, centres = torch.randn(32, 32, generator=generator), torch.randn(4, 32, generator=generator)
    score = UnknownScore(whitening, centres)
    features = torch.randn(6, 32, generator=generator) * 5
    assert UnknownScore32(score)(features) == pytest.approx(score(features), rel=1e-5)


def test_an_ensembles_members_get_the_float32_score_and_the_ensemble_itself_is_left_as_it_was():
    from torch import nn

    from headstart.deploy.ensemble import MeanProbabilities
    from headstart.deploy.unknown import in_float32
    from headstart.model.build import WithScore, returns_score
    from headstart.tasks.single_label import SINGLE_LABEL

    class Pooled(nn.Module):  # a stock-timm-like classifier: pooled features, then a Linear
        def __init__(self):
            super().__init__()
            self.features, self.fc = nn.Sequential(nn.Flatten(), nn.Linear(12, 8)), nn.Linear(8, 3)

        def forward_features(self, x):
            return self.features(x)

        def forward_head(self, x, pre_logits=False):
            return x if pre_logits else self.fc(x)

        def get_classifier(self):
            return self.fc

    generator = torch.Generator().manual_seed(0)
    members = [
        WithScore(
            Pooled(), UnknownScore(torch.randn(8, 8, generator=generator), torch.randn(3, 8, generator=generator))
        )
        for _ in range(2)
    ]
    ensemble = MeanProbabilities(members, SINGLE_LABEL, thresholds=[2.0, 3.0]).eval()
    swapped = in_float32(ensemble)
    assert returns_score(ensemble) and returns_score(swapped) and swapped is not ensemble
    assert all(isinstance(member.score, UnknownScore32) for member in swapped.members)
    assert all(isinstance(member.score, UnknownScore) for member in ensemble.members)  # the original untouched
    x = torch.randn(5, 3, 2, 2, generator=generator)
    with torch.no_grad():
        (mean, score), (mean32, score32) = ensemble(x), swapped(x)
    assert torch.allclose(mean32, mean) and score32 == pytest.approx(score, rel=1e-5)


def test_a_tflite_file_headstart_wrote_runs_as_its_run_predicts(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from headstart.deploy.format_tflite import read_metadata

    model = FIXTURE / "model.tflite"
    inside = read_metadata(model)
    assert inside == json.loads(sidecar_path(model).read_text())  # the description, inside the file too
    assert inside["classes"] == ["blue", "green", "red"] and inside["preprocessing"]["image_size"] == 32
    assert inside["temperature_applied"] and inside["unknown"]["threshold"] > 0
    assert_same_predictions(load(model), load(FIXTURE / "best.pt", device="cpu"), images(tmp_path / "img"))


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """The packaged default backbone after a one-epoch head stage (as test_export's): real ops, TF 'same' padding."""
    pytest.importorskip("litert_torch")  # the tflite extra, not in the test extra: skip before training
    return train_lite0_head(tmp_path_factory.mktemp("mobile"))


@pytest.mark.slow
def test_a_tflite_export_of_the_packaged_backbone_matches_predict(lite0_run, tmp_path):
    """Converted afresh where litert-torch is installed."""
    from headstart.deploy.format_tflite import read_metadata

    run_dir, data = lite0_run
    path = headstart.export(run_dir, format="tflite", out=tmp_path / "lite0.tflite")
    description = json.loads(sidecar_path(path).read_text())
    assert read_metadata(path) == description and description["runtime"] == "tflite"
    assert description["input"].startswith(f"image: float32 [1, 3, {description['preprocessing']['image_size']}")
    pictures = sorted(data.rglob("*.png"))[::4]
    assert_same_predictions(load(path), load(run_dir, device="cpu"), pictures)


def test_a_coreml_package_holds_its_description_inputs_and_outputs(trained, tmp_path, capsys):
    pytest.importorskip("coremltools")
    from headstart.cli import main
    from headstart.deploy.format_coreml import _coremltools, read_metadata

    run_dir, _ = trained
    target = tmp_path / "model.mlpackage"
    assert main(["export", str(run_dir), "--format", "coreml", "--out", str(target)]) == 0
    assert (target / "Manifest.json").is_file()
    description = json.loads(sidecar_path(target).read_text())
    assert read_metadata(target) == description
    with _coremltools("reading") as ct:
        spec = ct.models.MLModel(str(target), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    size = description["preprocessing"]["image_size"]
    (image,) = spec.description.input
    assert image.name == "image" and list(image.type.multiArrayType.shape) == [1, 3, size, size]
    assert image.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    outputs = {o.name: list(o.type.multiArrayType.shape) for o in spec.description.output}
    assert outputs == {"logits": [1, len(description["classes"])], "unknown_score": [1]}
    metadata = spec.description.metadata.userDefined
    assert json.loads(metadata["classes"]) == description["classes"] == ["blue", "red"]
    assert json.loads(metadata["preprocessing"]) == description["preprocessing"]
    # no Core ML runtime off Apple's systems: loading it is the one-line error, not a traceback
    with pytest.raises(HeadstartError, match="cannot run here: Core ML runs on macOS"):
        load(target)
    # exported again, the package is replaced; a folder export did not write is never replaced
    assert main(["export", str(run_dir), "--format", "coreml", "--out", str(target)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage", "model.mlpackage.json"]
    (tmp_path / "mine.mlpackage").mkdir()
    (tmp_path / "mine.mlpackage" / "notes.txt").write_text("keep")
    assert main(["export", str(run_dir), "--format", "coreml", "--out", str(tmp_path / "mine.mlpackage")]) == 2
    assert (tmp_path / "mine.mlpackage" / "notes.txt").read_text() == "keep"
    assert "did not write" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fmt, module, extra", [("tflite", "litert_torch", "tflite"), ("coreml", "coremltools", "coreml")]
)
def test_a_missing_converter_is_one_line_naming_the_extra(trained, tmp_path, monkeypatch, capsys, fmt, module, extra):
    from headstart.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main(["export", str(trained[0]), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"[{extra}]" in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_running_a_tflite_file_without_the_runtime_names_the_extra(tmp_path, monkeypatch):
    shutil.copy(FIXTURE / "model.tflite", tmp_path / "model.tflite")
    shutil.copy(FIXTURE / "model.tflite.json", tmp_path / "model.tflite.json")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(HeadstartError, match=r"\[tflite\]"):
        load(tmp_path / "model.tflite")
