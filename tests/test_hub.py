"""Hub folders timm rebuilds alone, headstart-shaped ones headstart.load rebuilds; torch.export files; int8 ONNX; push."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import headstart
from headstart.cli import main
from headstart.deploy.predictor import Predictor
from tests.conftest import CLASS_COLOURS, tiny_recipe, with_temperature, write_images

# Runs in a fresh interpreter where importing headstart fails, so only timm can rebuild the model.
TIMM_ALONE = """
import json, sys
sys.modules["headstart"] = None
import timm, torch
from PIL import Image
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in sys.argv[2:]])
with torch.no_grad():
    probabilities = model(batch).softmax(1)
print(json.dumps({"labels": model.pretrained_cfg["label_names"], "probabilities": probabilities.tolist()}))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("hub") / "data", CLASS_COLOURS, per_class=6, size=40)


def train_run(data, out, model, data_fields=None, **overrides):
    recipe = tiny_recipe(
        data,
        out,
        data={"image_size": 32, **(data_fields or {})},
        model=model,
        stages=[{"name": "all", "epochs": 1, "freeze": "none", "lr": 0.01}],
        **overrides,
    )
    return headstart.train(recipe, quiet=True).run_dir


@pytest.mark.slow
def test_plain_timm_run_rebuilds_with_timm_alone(data, tmp_path, capsys):
    run = train_run(data, tmp_path / "runs", {"backbone": "test_resnet", "weights": "none", "backbone_args": {}})
    with_temperature(run)
    folder = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(folder)]) == 0
    assert {"model.safetensors", "config.json", "README.md", "confusion.png"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == ["blue", "green", "red"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    card = (folder / "README.md").read_text()
    # The run has a temperature: folded into the classifier, so timm alone gives the calibrated probabilities.
    assert "timm alone rebuilds it" in card and "| red | 5 | 1 |" in card and "already folded" in card

    images = [str(p) for name in CLASS_COLOURS for p in sorted((data / name).iterdir())[:2]]
    result = subprocess.run(
        [sys.executable, "-c", TIMM_ALONE, str(folder), *images],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rebuilt = json.loads(result.stdout.strip().splitlines()[-1])
    mine = headstart.load(run, device="cpu")
    assert rebuilt["labels"] == mine.classes
    expected = mine.probabilities([_image(p) for p in images])  # headstart predict's: calibrated
    assert mine.temperature is not None
    raw = Predictor(mine.forward, mine.classes, mine.preprocessing)
    assert (raw.probabilities([_image(p) for p in images]) - expected).abs().max().item() > 1e-3  # T matters here
    assert (torch.tensor(rebuilt["probabilities"]) - expected).abs().max().item() < 1e-4
    # headstart reads the same folder too, and does not divide by the temperature a second time
    assert torch.allclose(headstart.load(folder).probabilities([_image(images[0])]), expected[:1], atol=1e-5)


def _image(path):
    from PIL import Image

    with Image.open(path) as opened:
        return opened.convert("RGB")


def test_adapter_and_gap_dense_model_loads_through_headstart(data, tmp_path):
    model = {
        "backbone": "headstart_cnn",
        "backbone_args": {"widths": [8, 16], "convs_per_block": 1, "dropout": 0.0},
        "adapters": [{"kind": "conv"}],
        "head": {"kind": "gap-dense", "hidden": 8},
    }
    run = train_run(data, tmp_path / "runs", model, data_fields={"test_fraction": 0.2})
    folder = headstart.export(run, format="hub", out=tmp_path / "hub")
    config = json.loads((folder / "config.json").read_text())
    assert config["headstart"]["layout"] == "headstart"
    card = (folder / "README.md").read_text()
    assert "headstart.load" in card and "| train images | val images | test images |" in card
    test = headstart.core.runs.read_test(run)
    assert f"On the held-out test split ({test['images']} images" in card and f"**{test['acc']:.4f}**" in card
    images = [_image(p) for p in sorted((data / "green").iterdir())]
    expected = headstart.load(run, device="cpu").probabilities(images)
    got = headstart.load(folder, device="cpu").probabilities(images)
    assert torch.allclose(got, expected, atol=1e-6)
    confusion = tmp_path / "c.png"
    assert main(["evaluate", str(folder), str(data), "--json", "--confusion", str(confusion)]) == 0
    assert confusion.is_file()


def test_convnext_with_timm_head_norm_is_not_mistaken_for_plain_timm(data, tmp_path):
    """timm's ConvNeXt normalises before its classifier; headstart's linear head does not, so timm cannot load it."""
    run = train_run(data, tmp_path / "runs", {"backbone": "test_convnext", "weights": "none", "backbone_args": {}})
    folder = headstart.export(run, format="hub", out=tmp_path / "hub")
    assert json.loads((folder / "config.json").read_text())["headstart"]["layout"] == "headstart"
    images = [_image(p) for p in sorted((data / "red").iterdir())[:3]]
    expected = headstart.load(run, device="cpu").probabilities(images)
    assert torch.allclose(headstart.load(folder, device="cpu").probabilities(images), expected, atol=1e-6)


def test_torch_export_pt2_predicts_like_the_checkpoint(data, tmp_path, capsys):
    run = train_run(data, tmp_path / "runs", {"backbone": "test_efficientnet", "weights": "none", "backbone_args": {}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = headstart.export(run, format="export")
    assert path.name == "model.pt2" and not caught
    images = sorted((data / "blue").iterdir())
    assert main(["predict", str(path), *map(str, images), "--json", "--top-k", "2"]) == 0
    exported = json.loads(capsys.readouterr().out)
    original = headstart.load(run, device="cpu").predict(images, top_k=2)
    for entry, top in zip(exported, original):
        assert [t["label"] for t in entry["top"]] == [label for label, _ in top]
        assert [t["probability"] for t in entry["top"]] == pytest.approx([p for _, p in top], abs=1e-5)


def test_torchscript_is_exported_only_without_warnings(data, tmp_path, capsys):
    run = train_run(data, tmp_path / "runs", {"backbone": "test_resnet", "weights": "none", "backbone_args": {}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    code = main(["export", str(run), "--format", "torchscript"])
    if caught:  # this torch deprecates torch.jit: the format is refused, pointing at torch.export
        assert code == 2 and "--format export" in capsys.readouterr().err
        assert not (run / "export" / "model.torchscript").exists()
    else:
        assert code == 0 and (run / "export" / "model.torchscript").is_file()


@pytest.mark.slow
def test_int8_onnx_is_calibrated_on_the_validation_images_and_agrees(data, tmp_path):
    run = train_run(data, tmp_path / "runs", {"backbone": "test_efficientnet", "weights": "none", "backbone_args": {}})
    path = headstart.export(run, format="onnx", quantize="int8")
    assert path.name == "model.int8.onnx" and (path.parent / "model.onnx").is_file()
    described = json.loads((path.parent / "model.int8.onnx.json").read_text())
    assert "calibrated on 3 validation images" in described["quantization"]
    assert described["unknown"]["refitted"] == "for int8 on 3 val images"  # its own unknown-image threshold
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    images = [_image(p) for name in CLASS_COLOURS for p in sorted((data / name).iterdir())]
    fp32 = headstart.load(path.parent / "model.onnx").probabilities(images)
    int8 = headstart.load(path).probabilities(images)
    assert (int8 - fp32).abs().max().item() < 0.05


def test_quantize_needs_onnx(data, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "export", "--quantize", "int8"]) == 2
    assert "valid is --quantize int8 with --format onnx" in capsys.readouterr().err


def test_push_dry_run_lists_files_and_offline_push_is_one_line(data, tmp_path, capsys, monkeypatch):
    run = train_run(data, tmp_path / "runs", {"backbone": "test_resnet", "weights": "none", "backbone_args": {}})
    assert main(["push", str(run), "me/colours", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "model.safetensors" in out
        and "config.json" in out
        and "would upload to https://huggingface.co/me/colours" in out
    )
    assert main(["push", str(run), "not a repo"]) == 2
    assert "is not OWNER/NAME" in capsys.readouterr().err
    # Nothing listens on port 9: the Hub is unreachable, as offline.
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    assert main(["push", str(run), "me/colours"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headstart: error: could not push to me/colours") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_any_timm_hub_folder_loads_through_headstart(tmp_path):
    """A folder timm itself saved (no headstart block): labels and preprocessing come from timm's config."""
    import timm
    from PIL import Image

    net = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    timm.models.save_for_hf(net, str(tmp_path), model_config={"label_names": ["cat", "dog"]}, safe_serialization=True)
    predictor = headstart.load(tmp_path, device="cpu")
    assert predictor.classes == ["cat", "dog"]
    image = Image.new("RGB", (50, 40), (90, 120, 30))
    with torch.no_grad():
        expected = net(predictor.transform(image)[None]).softmax(1)
    assert torch.allclose(predictor.probabilities([image]), expected, atol=1e-6)


def test_push_dry_run_reuses_an_up_to_date_hub_folder_and_re_exports_a_stale_one(trained, tmp_path, monkeypatch):
    from headstart.deploy import hub, push

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    first = headstart.push(run, "me/colours", dry_run=True)
    assert not first.reused and (run / "export" / "hub" / "model.safetensors").is_file()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(hub, "export_hub", no_export)
    again = push.push(run, "me/colours", dry_run=True)
    assert again.reused and again.files == first.files
    later = (run / "export" / "hub" / "model.safetensors").stat().st_mtime + 60
    os.utime(run / "best.pt", (later, later))  # a newer checkpoint: the folder is stale
    with pytest.raises(AssertionError, match="exported again"):
        push.push(run, "me/colours", dry_run=True)
