"""Progress bars: every long phase of a run shows one on a terminal, none under quiet or in a log file."""

import logging

import headstart
from headstart.core import progress as progress_module
from headstart.core.progress import progress
from tests.conftest import tiny_recipe


def test_bars_show_on_a_terminal_only_while_headstart_reports(monkeypatch):
    log = logging.getLogger("headstart")
    monkeypatch.setattr(log, "level", log.level)  # restored after the test; setLevel also clears the logger's cache
    log.setLevel(logging.INFO)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not progress_module.shown()  # a log file or a pipe: no bar
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert progress_module.shown()
    log.setLevel(logging.WARNING)  # what quiet=True / --quiet sets
    assert not progress_module.shown()
    assert list(progress(range(3), "x")) == [0, 1, 2]


def test_decoding_the_feature_pass_and_each_epoch_show_progress(colour_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "shown", lambda: True)  # as on a terminal
    headstart.train(tiny_recipe(colour_folder, tmp_path / "runs"), quiet=True)
    bars = capsys.readouterr().err
    for phase in ("decoding images", "features at", "head 1/2", "all 1/3"):
        assert phase in bars, phase
