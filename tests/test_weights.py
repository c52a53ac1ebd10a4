"""Weight sources: packaged TF-ported weights, local files (fit or refused), the hub's failure path."""

import os
import pickle

import pytest
import timm
import torch
from PIL import Image

from headstart.config.recipe import ModelConfig
from headstart.core.errors import HeadstartError
from headstart.model.build import build_model
from headstart.model.weights import load_backbone_weights, read_state_dict

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_packaged_lite0_classifies_a_real_cat_photo():
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0").eval()
    load_backbone_weights(model, "tf_efficientnet_lite0", "package")
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        probabilities = model(transform(Image.fromarray(data.chelsea())).unsqueeze(0)).softmax(1)[0]
    assert int(probabilities.argmax()) in IMAGENET_CATS
    assert float(probabilities[list(IMAGENET_CATS)].sum()) > 0.8


def test_file_weights_round_trip(tmp_path):
    source = timm.create_model("test_efficientnet")
    path = tmp_path / "backbone.pt"
    # A training checkpoint: state_dict under 'state_dict', keys prefixed by DDP.
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    model = build_model(ModelConfig(backbone="test_efficientnet", weights=f"file:{path}"), num_classes=2, image_size=32)
    assert torch.equal(model.backbone.conv_stem.weight, source.conv_stem.weight)
    assert torch.equal(model.backbone.bn2.running_var, source.bn2.running_var)


def test_file_that_does_not_fit_is_refused(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(HeadstartError, match="does not fit"):
        build_model(ModelConfig(backbone="test_efficientnet", weights=f"file:{path}"), num_classes=2, image_size=32)


def test_file_with_wrong_shapes_is_refused(tmp_path):
    state = timm.create_model("test_efficientnet").state_dict()
    state["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(HeadstartError, match="conv_stem.weight"):
        build_model(ModelConfig(backbone="test_efficientnet", weights=f"file:{path}"), num_classes=2, image_size=32)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": RunsCode()}))
    with pytest.raises(HeadstartError, match="cannot read weights file"):
        read_state_dict(path)


def test_missing_file():
    with pytest.raises(HeadstartError, match="not found"):
        build_model(ModelConfig(backbone="test_efficientnet", weights="file:/no/such/file.pt"), num_classes=2)


def test_hub_failure_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to the hub")
        return timm.create_model(*args, **kwargs)

    monkeypatch.setattr("headstart.model.build.timm.create_model", offline)
    with pytest.raises(HeadstartError, match="offline, use --weights package"):
        build_model(ModelConfig(backbone="resnet18", weights="hub"), num_classes=2)


def test_default_source_is_package_for_lite_and_hub_otherwise():
    from headstart.model.weights import default_source

    assert default_source("tf_efficientnet_lite0") == "package"
    assert default_source("resnet50") == "hub"
    assert default_source("headstart_cnn") == "none"
