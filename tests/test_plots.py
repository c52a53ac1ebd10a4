"""The figures' data and layout (not their pixels): curves.png."""

import numpy as np
import pytest

from headstart.core import plots


@pytest.fixture
def figures(monkeypatch):
    kept = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: kept.append(figure) or path)
    return kept


def history(epochs=5):
    return [
        {
            "stage": "head" if epoch <= 2 else "finetune",
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch + (0.3 if epoch == 5 else 0),
            "train_acc": 0.5 + epoch / 20,
            "val_acc": 0.4 + epoch / 20,
            "val_balanced_acc": 0.4 + epoch / 25,
            "val_f1": 0.4 + epoch / 30,
        }
        for epoch in range(1, epochs + 1)
    ]


def test_curves_have_whole_epoch_ticks_a_kept_epoch_marker_readable_stages_and_a_legend_off_the_curves(
    figures, tmp_path
):
    rows = history()
    plots.plot_curves(rows, tmp_path / "curves.png", best=4)
    figure = figures[0]
    figure.tight_layout()
    figure.canvas.draw()
    for axis, metric in zip(figure.axes, ("val_loss", "val_acc")):
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        kept = [line for line in axis.get_lines() if line.get_label().startswith("kept")]
        assert len(kept) == 1 and list(kept[0].get_xdata()) == [4]
        assert np.isclose(kept[0].get_ydata()[0], rows[3][metric])
        stages = [text for text in axis.texts if text.get_text() in ("head", "finetune")]
        assert len(stages) == 2 and min(text.get_fontsize() for text in stages) >= 10
        legend = axis.get_legend().get_window_extent()
        assert legend.y1 <= axis.get_window_extent().y0  # below the plot, over no curve


def test_bins_piled_up_at_full_confidence_get_one_count_label():
    x = [0.62, 0.81, 0.991, 0.996, 0.999, 1.0]
    y = [0.6, 0.83, 1.0, 1.0, 1.0, 1.0]
    labels = plots.count_labels(x, y, [12, 12, 12, 12, 12, 11])
    assert [text for _, _, text in labels] == ["12", "12", "47 in 4 bins"]
    assert labels[-1][:2] == (0.991, 1.0)  # placed at the group's first bin
