"""CurvePlot: a training run's loss and validation curves, one line per metric over its
epochs (boosting rounds for a tree model), drawn with textual-plotext.

The Training screen hands it the run's recorded history (`train_history`: per step, the
metrics of that epoch); it plots the losses (train and validation loss, XGBoost's validation
log-loss or RMSE) and leaves scores on another scale (accuracy) to the text beside it. A run
that recorded only search trials plots each trial's score. `series` keeps exactly what was
plotted, x and y per metric, so a test compares it with the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual_plotext import PlotextPlot

# metric names drawn as curves: losses share one scale (accuracy and IC do not)
_LOSSY = ("loss", "rmse", "error", "mae")


def is_loss(name: str) -> bool:
    """Whether metric `name` is a loss (plotted) rather than a score on another scale."""
    return any(part in name for part in _LOSSY)


def curves_of(epochs: Iterable[Any]) -> dict[str, tuple[list[int], list[float]]]:
    """Per loss metric, its steps and values (undefined ones left out), from a run's history
    rows (`EpochMetrics`: step, split, metrics), epochs first; only when a run recorded no
    epoch, its trials' scores."""
    rows = list(epochs)
    wanted = "epoch" if any(row.split == "epoch" for row in rows) else "trial"
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in sorted((r for r in rows if r.split == wanted), key=lambda r: r.step):
        for name, value in row.metrics.items():
            if value is None or not (wanted == "trial" or is_loss(name)):
                continue
            label = f"trial {name}" if wanted == "trial" else name
            xs, ys = series.setdefault(label, ([], []))
            xs.append(int(row.step) + 1)  # epoch 1 is the first
            ys.append(float(value))
    return series


class CurvePlot(PlotextPlot):
    """The curves of one run (see the module docstring)."""

    DEFAULT_CSS = """
    CurvePlot {
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.series: dict[str, tuple[list[int], list[float]]] = {}
        self.plot_title = "no run selected"
        self.x_label = "epoch"

    def show(self, title: str, epochs: Iterable[Any], *, x_label: str = "epoch") -> None:
        """Plot the loss curves of a run's history rows under `title`."""
        self.series = curves_of(epochs)
        if self.series and all(name.startswith("trial ") for name in self.series):
            x_label = "trial"
        self.plot_title, self.x_label = title, x_label
        self.replot()

    def clear(self, title: str) -> None:
        """No curves (no run selected, or none recorded yet): the title says why."""
        self.series, self.plot_title = {}, title
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.plot_title)
        plt.xlabel(self.x_label)
        for name, (xs, ys) in self.series.items():
            if len(xs) == 1:  # one point: a marker, a line needs two
                plt.scatter(xs, ys, label=name)
            else:
                plt.plot(xs, ys, label=name)
        self.refresh()

    def on_mount(self) -> None:
        self.replot()
