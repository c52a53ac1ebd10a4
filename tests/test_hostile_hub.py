"""Hostile Hub folders (issue 26, item 7): every crafted config.json or model.safetensors is a one-line error.

Each probe starts from a real Hub folder exported from a tiny run (timm's layout from test_resnet,
headstart's own from the scratch CNN), damages one thing, and loads it: never a traceback, never
labels that do not match the outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest

import headstart
from headstart.core.errors import HeadstartError
from headstart.deploy.hubconfig import read_hub_config
from tests.conftest import CLASS_COLOURS, tiny_recipe, with_temperature, write_images
from tests.probes import cli


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory):
    """{'timm': folder, 'headstart': folder}, exported once from two one-epoch runs."""
    root = tmp_path_factory.mktemp("hub")
    data = write_images(root / "data", CLASS_COLOURS, per_class=4, size=32)
    models = {"timm": {"backbone": "test_resnet", "weights": "none", "backbone_args": {}}, "headstart": None}
    folders = {}
    for layout, model in models.items():
        recipe = tiny_recipe(data, root / "runs", data={"image_size": 32}, run={"name": layout})
        recipe["stages"] = [{"name": "all", "epochs": 1, "freeze": "none", "lr": 0.01}]
        recipe["model"] = model or recipe["model"]
        run = with_temperature(headstart.train(recipe, quiet=True).run_dir)
        folders[layout] = headstart.export(run, format="hub", out=root / f"hub-{layout}")
        assert json.loads((folders[layout] / "config.json").read_text())["headstart"]["layout"] == layout
    return folders


def setter(path: str, value):
    """A change to config.json: set the field at dotted `path` (a missing parent is an error of the probe)."""

    def change(config):
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        config[last] = value

    return change


def dropper(path: str):
    def change(config):
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        del config[last]

    return change


def more_classes(n: int):
    def change(config):
        names = [f"c{i}" for i in range(n)]
        config.update(num_classes=n, label_names=names)
        config["headstart"]["classes"] = names
        if "model_args" in config:  # timm's copy of the count, so only the weights disagree
            config["model_args"]["num_classes"] = n

    return change


# (layout, change to config.json, words the one-line error must hold)
CRAFTED_CONFIGS = {
    "architecture missing": ("timm", dropper("architecture"), "architecture"),
    "architecture a number": ("timm", setter("architecture", 123), "architecture"),
    "architecture unknown": ("timm", setter("architecture", "resnet_nosuch"), "not a timm model"),
    "architecture giant": ("timm", setter("architecture", "vit_giant_patch14_224" * 200), "architecture"),
    "num_classes a string": ("timm", setter("num_classes", "3"), "num_classes"),
    "num_classes 0": ("timm", setter("num_classes", 0), "num_classes"),
    "label_names a string": ("timm", setter("label_names", "xyz"), "label_names"),
    "label 3.5": ("timm", setter("label_names", [3.5, "green", "red"]), "label_names"),
    "label null": ("timm", setter("label_names", [None, "green", "red"]), "label_names"),
    "label empty": ("timm", setter("label_names", ["", "green", "red"]), "label_names"),
    "labels repeat": ("headstart", setter("headstart.classes", ["red", "red", "blue"]), "repeat"),
    "100,000 labels, 3 classes": ("timm", setter("label_names", [f"c{i}" for i in range(100_000)]), "100000"),
    "100,000 classes, 3 outputs (timm)": ("timm", more_classes(100_000), "3 outputs"),
    "5 classes, 3 outputs (headstart)": ("headstart", more_classes(5), "3 outputs"),
    "pretrained_cfg missing": ("timm", dropper("pretrained_cfg"), "pretrained_cfg"),
    "mean abc": ("timm", setter("pretrained_cfg.mean", "abc"), "mean"),
    "mean of two": ("timm", setter("pretrained_cfg.mean", [0.5, 0.5]), "mean"),
    "std 0": ("timm", setter("pretrained_cfg.std", [0, 0.5, 0.5]), "std"),
    "interpolation evil": ("timm", setter("pretrained_cfg.interpolation", "evil"), "interpolation"),
    "input_size 0": ("timm", setter("pretrained_cfg.input_size", [3, 0, 0]), "input_size"),
    "input_size negative": ("timm", setter("pretrained_cfg.input_size", [3, -32, 32]), "input_size"),
    "input_size 100000": ("timm", setter("pretrained_cfg.input_size", [3, 100_000, 100_000]), "input_size"),
    "input_size a string": ("timm", setter("pretrained_cfg.input_size", "big"), "input_size"),
    "model_args img_size": ("timm", setter("model_args.img_size", 1_000_000), "model_args"),
    "headstart model missing": ("headstart", dropper("headstart.model"), "model"),
    "headstart preprocessing missing": ("headstart", dropper("headstart.preprocessing"), "preprocessing"),
    "headstart image_size 100000": ("headstart", setter("headstart.preprocessing.image_size", 100_000), "image_size"),
    "headstart head kind": ("headstart", setter("headstart.model.head.kind", "evil"), "head"),
    "headstart widths 10**7": ("headstart", setter("headstart.model.backbone_args.widths", [10**7]), "headstart.model"),
    "resize adapter": ("headstart", setter("headstart.model.adapters", [{"kind": "resize", "factor": 4000}]), "resize"),
    "temperature NaN": ("timm", setter("headstart.temperature", float("nan")), "temperature"),
    "temperature negative": ("timm", setter("headstart.temperature", -1), "temperature"),
    "temperature a string": ("timm", setter("headstart.temperature", "hot"), "temperature"),
}


def crafted_copy(hub_folders, tmp_path, layout: str) -> Path:
    folder = tmp_path / "crafted"
    shutil.copytree(hub_folders[layout], folder)
    return folder


def assert_one_line_error(folder: Path, *words: str) -> str:
    with pytest.raises(HeadstartError) as caught:
        headstart.load(folder, device="cpu")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert all(word in message for word in words), message
    return message


@pytest.mark.parametrize("probe", CRAFTED_CONFIGS)
def test_a_crafted_hub_config_is_a_one_line_error(hub_folders, tmp_path, probe):
    layout, change, word = CRAFTED_CONFIGS[probe]
    folder = crafted_copy(hub_folders, tmp_path, layout)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(folder, word)


CRAFTED_JSON = {
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "not an object": b"[1, 2]",
    "not json": b"{architecture",
    "not utf-8": b"\xff\xfe{",
    "empty": b"",
}


@pytest.mark.parametrize("probe", CRAFTED_JSON)
def test_a_config_json_that_is_not_a_json_object_is_a_one_line_error(hub_folders, tmp_path, probe):
    folder = crafted_copy(hub_folders, tmp_path, "timm")
    (folder / "config.json").write_bytes(CRAFTED_JSON[probe])
    assert_one_line_error(folder, "config.json")


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def with_header(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def offsets(change):
    """Damage the data offsets of the file's tensors: `change(header, names)` edits them in place."""

    def damage(raw_path: Path) -> bytes:
        header, body = safetensors_parts(raw_path)
        change(header, [name for name in header if name != "__metadata__"])
        return with_header(header, body)

    return damage


DAMAGED_WEIGHTS = {
    "empty": lambda path: b"",
    "header too large": lambda path: struct.pack("<Q", 10**12) + b"{}",
    "truncated": lambda path: path.read_bytes()[: path.stat().st_size // 2],
    "offsets past the end": offsets(lambda h, names: h[names[-1]].update(data_offsets=[0, 10**12])),
    "overlapping": offsets(lambda h, names: h[names[1]].update(data_offsets=h[names[0]]["data_offsets"])),
    "header not json": lambda path: struct.pack("<Q", 5) + b"abcde",
}


@pytest.mark.parametrize("layout", ["timm", "headstart"])
@pytest.mark.parametrize("probe", DAMAGED_WEIGHTS)
def test_damaged_hub_weights_are_a_one_line_error(hub_folders, tmp_path, probe, layout):
    folder = crafted_copy(hub_folders, tmp_path, layout)
    weights = folder / "model.safetensors"
    weights.write_bytes(DAMAGED_WEIGHTS[probe](weights))
    assert_one_line_error(folder, "model.safetensors")


@pytest.mark.parametrize("probe", ["label_names a string", "100,000 classes, 3 outputs (timm)", "input_size 100000"])
def test_predict_on_a_crafted_hub_folder_exits_2_with_one_line(hub_folders, tmp_path, capsys, probe):
    layout, change, word = CRAFTED_CONFIGS[probe]
    folder = crafted_copy(hub_folders, tmp_path, layout)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    image = write_images(tmp_path / "img", {"red": CLASS_COLOURS["red"]}, per_class=1) / "red" / "000.png"
    code, out, err = cli(["predict", folder, image], capsys, seconds=60)  # cli asserts one line, no traceback
    assert code == 2 and word in err and not out


def test_the_unharmed_folders_still_load(hub_folders):
    for folder in hub_folders.values():
        predictor = headstart.load(folder, device="cpu")
        block = read_hub_config(folder).headstart
        assert predictor.classes == ["blue", "green", "red"] and block is not None and block.temperature is not None
        assert block.temperature_applied and predictor.temperature is None  # folded into the weights, not applied twice


# ----------------------------------------------------------------------------- 9: what a Hub folder tells others


def test_a_hub_folder_is_readable_by_others_as_the_umask_allows(hub_folders):
    # mkdtemp (the staging folder) makes 0700, safetensors writes 0600: others could not read a model meant for them.
    mask = os.umask(0)
    os.umask(mask)
    for layout, folder in hub_folders.items():
        for path in [folder, *folder.rglob("*")]:
            want = (0o777 if path.is_dir() else 0o666) & ~mask
            assert stat.S_IMODE(path.stat().st_mode) == want, (layout, path.name, oct(path.stat().st_mode))
        assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in folder.iterdir()}


@pytest.mark.slow
def test_a_hub_folder_names_no_local_path(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    home = tmp_path / "home" / "alice"
    data = write_images(home / "photos", CLASS_COLOURS, per_class=4, size=32)
    weights = home / "weights.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(weights))
    model = {"backbone": "test_resnet", "weights": f"file:{weights}", "backbone_args": {}}
    recipe = tiny_recipe(data, home / "runs", data={"image_size": 32}, model=model)
    recipe["stages"] = [{"name": "all", "epochs": 1, "freeze": "none", "lr": 0.01}]
    run = headstart.train(recipe, quiet=True).run_dir
    assert headstart.push(run, "me/colours", dry_run=True).folder == run / "export" / "hub"
    shutil.move(data, tmp_path / "moved")  # the card's note that the data is gone names no path either
    absent = headstart.export(run, format="hub", out=tmp_path / "hub-absent")
    for folder in (run / "export" / "hub", absent):
        for name in ("README.md", "config.json"):
            text = (folder / name).read_text()
            assert str(tmp_path) not in text and str(Path.home()) not in text, (name, text)
        assert "photos" in (folder / "README.md").read_text()  # the data folder's name is kept
        assert headstart.load(folder, device="cpu").classes == ["blue", "green", "red"]
    assert "file:weights.safetensors" in (absent / "config.json").read_text()
