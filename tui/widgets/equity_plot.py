"""EquityPlot: a backtest's equity curves (the strategy against buy-and-hold) as a plot.

A `PlotextPlot` (textual-plotext over plotext 5; plotext 6 breaks it) drawn from the
`equity` of the backtest operation's answer (`engine.service.evaluation.EquityCurves`, at
most 2,000 points): equity as the percentage gained since the first candle, candles on the
x axis labelled with their times in KST (or UTC, `utc`).
"""

from __future__ import annotations

from datetime import datetime

from textual_plotext import PlotextPlot

from tui.fmt import fmt_time, zone

# the results drawn, strategy first; no-trade is the flat line at 0 and is left out
BASELINE = "buy-and-hold"
COLORS = ("cyan", "orange", "magenta")


class EquityPlot(PlotextPlot):
    DEFAULT_CSS = """
    EquityPlot {
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.ts: list[datetime] = []
        self.series: dict[str, list[float | None]] = {}  # drawn: name -> equity (1.0 = start)
        self.utc = False
        self.title = ""
        self._draw()

    def show(
        self,
        ts: list[datetime],
        values: dict[str, list[float | None]],
        *,
        utc: bool = False,
        title: str = "",
    ) -> None:
        """Draw `values` (equity by result name, the strategy first) at the candles `ts`;
        the strategy and buy-and-hold are drawn, other baselines are not."""
        names = list(values)
        keep = names[:1] + [n for n in names[1:] if n == BASELINE]
        self.ts, self.series = list(ts), {name: list(values[name]) for name in keep}
        self.utc, self.title = utc, title
        self._draw()

    def set_utc(self, utc: bool) -> None:
        """Relabel the time axis in UTC or KST."""
        if utc != self.utc:
            self.utc = utc
            self._draw()

    def clear(self) -> None:
        self.ts, self.series, self.title = [], {}, ""
        self._draw()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        if not self.ts or not self.series:
            plt.title("equity: run a backtest (ctrl+r)")
            self.refresh()
            return
        xs = list(range(len(self.ts)))
        for (name, equity), color in zip(self.series.items(), COLORS, strict=False):
            pairs = [(x, (v - 1.0) * 100) for x, v in zip(xs, equity, strict=True) if v is not None]
            if pairs:
                plt.plot([p[0] for p in pairs], [p[1] for p in pairs], label=name, color=color)
        ticks = _tick_positions(len(xs), 4)
        fmt = "%m-%d %H:%M"
        plt.xticks(
            [float(t) for t in ticks], [fmt_time(self.ts[i], utc=self.utc, fmt=fmt) for i in ticks]
        )
        plt.title(f"{self.title} · equity % ({zone(self.utc)})" if self.title else "equity %")
        self.refresh()


def _tick_positions(n: int, count: int) -> list[int]:
    """`count` evenly spread indices of `n` points, first and last included."""
    if n <= 1:
        return [0] if n else []
    count = min(count, n)
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
