"""CPU precision and layout chosen by measuring the model, stored per machine, said in the log and summary."""

import pytest
import torch

import headstart
from headstart.config.recipe import ModelConfig
from headstart.core.distributed import SOLO
from headstart.core.hardware import pick_hardware
from headstart.model.build import build_model
from headstart.training import precision
from tests.conftest import tiny_recipe

TINY = ModelConfig(backbone="headstart_cnn", backbone_args={"widths": [8, 16], "convs_per_block": 1})


def test_each_auto_setting_is_tried_both_ways():
    assert precision.candidates("auto", "auto") == [("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False)]
    assert precision.candidates("fp32", "auto") == [("fp32", True), ("fp32", False)]
    assert precision.candidates("bf16", False) == [("bf16", False)]


def test_the_fastest_option_is_kept_and_remembered(monkeypatch):
    fake = {("fp32", True): 0.020, ("fp32", False): 0.030, ("bf16", True): 0.015, ("bf16", False): 0.012}
    monkeypatch.setattr(precision, "seconds_per_image", lambda _m, hw, _s: fake[(hw.precision, hw.channels_last)])
    model = build_model(TINY, 2, 16)
    options = precision.candidates("auto", "auto")
    hw, note = precision.measured(model, pick_hardware("cpu", "fp32"), 16, "headstart_cnn", options, SOLO)
    assert (hw.precision, hw.channels_last) == ("bf16", False)
    assert "bf16 NCHW is the fastest" in note and "measured now" in note and "12.0" in note

    def never(*_args):
        raise AssertionError("measured again: the stored figures were not used")

    monkeypatch.setattr(precision, "seconds_per_image", never)
    again, note = precision.measured(model, pick_hardware("cpu", "fp32"), 16, "headstart_cnn", options, SOLO)
    assert (again.precision, again.channels_last) == ("bf16", False) and "measured earlier" in note


def test_a_real_measurement_times_each_option_and_the_summary_says_which_won(colour_folder, tmp_path):
    model = build_model(TINY, 2, 16)
    seconds = precision.seconds_per_image(model, pick_hardware("cpu", "fp32", False), 16)
    assert 0 < seconds < 1
    result = headstart.train(
        tiny_recipe(colour_folder, tmp_path / "runs", run={"precision": "auto", "channels_last": "auto"}), quiet=True
    )
    summary = (result.run_dir / "summary.txt").read_text()
    line = next(line for line in summary.splitlines() if line.startswith("precision: "))
    chosen = line.removeprefix("precision: ").split(" is the fastest")[0]
    hardware = next(line for line in summary.splitlines() if line.startswith("hardware: "))
    assert chosen in hardware and "ms per image" in line
    assert chosen.split()[0] in ("fp32", "bf16")


@pytest.mark.parametrize("fixed", [{"precision": "fp32", "channels_last": True}])
def test_fixed_settings_are_not_measured(colour_folder, tmp_path, monkeypatch, fixed):
    monkeypatch.setattr(precision, "seconds_per_image", lambda *_: pytest.fail("measured a fixed choice"))
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", run=fixed), quiet=True)
    assert "precision: " not in (result.run_dir / "summary.txt").read_text()


def test_measuring_draws_nothing_from_the_run_s_random_streams():
    model = build_model(TINY, 2, 16)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    precision.seconds_per_image(model, pick_hardware("cpu", "fp32", True), 16)
    assert torch.equal(torch.rand(4), expected)
