"""CandleChart: a candlestick chart of the latest candles drawn with Unicode blocks, with a
price axis, a time axis and buy/sell markers."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any, ClassVar, NamedTuple

import pandas as pd
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

# Two sub-rows per terminal row: which of them a candle's body or wick covers picks the glyph.
_BODY, _WICK, _NONE = 2, 1, 0
_GLYPHS = {
    (_BODY, _BODY): "█",
    (_BODY, _WICK): "▀",
    (_BODY, _NONE): "▀",
    (_WICK, _BODY): "▄",
    (_NONE, _BODY): "▄",
    (_WICK, _WICK): "│",
    (_WICK, _NONE): "╵",
    (_NONE, _WICK): "╷",
    (_NONE, _NONE): " ",
}
_TIME_STEPS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 10080)


class Bar(NamedTuple):
    ts: pd.Timestamp
    open: float
    high: float
    low: float
    close: float

    @classmethod
    def from_candle(cls, candle: Mapping[str, Any]) -> Bar:
        return cls(
            pd.Timestamp(candle["ts"]),
            float(candle["open"]),
            float(candle["high"]),
            float(candle["low"]),
            float(candle["close"]),
        )

    @property
    def up(self) -> bool:
        return self.close >= self.open


def format_krw(price: float) -> str:
    """A KRW price with thousands separators; decimals only where Upbit's tick needs them."""
    if price >= 1000:
        return f"{price:,.0f}"
    if price >= 100:
        return f"{price:,.1f}"
    if price >= 1:
        return f"{price:,.2f}"
    return f"{price:,.4f}"


class CandleChart(Widget):
    """The last closed candles (plus the forming one when live), newest on the right."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "candle-chart--up",
        "candle-chart--down",
        "candle-chart--forming",
        "candle-chart--axis",
        "candle-chart--last-up",
        "candle-chart--last-down",
        "candle-chart--buy",
        "candle-chart--sell",
        "candle-chart--empty",
    }

    MAX_CANDLES = 600  # more than any terminal is wide

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._closed_bars: deque[Bar] = deque(maxlen=self.MAX_CANDLES)
        self._forming_bar: Bar | None = None
        self._signal_marks: dict[pd.Timestamp, str] = {}

    # --- data in -------------------------------------------------------------------------

    def load(self, candles: pd.DataFrame | Iterable[Mapping[str, Any]]) -> None:
        """Replace the chart's candles (the engine's primed window)."""
        rows = candles.to_dict("records") if isinstance(candles, pd.DataFrame) else candles
        self._closed_bars.clear()
        self._closed_bars.extend(Bar.from_candle(row) for row in rows)
        self._forming_bar = None
        self._changed()

    def add_candle(self, candle: Mapping[str, Any], closed: bool) -> None:
        bar = Bar.from_candle(candle)
        if not closed:
            self._forming_bar = bar
        else:
            if self._closed_bars and self._closed_bars[-1].ts == bar.ts:
                self._closed_bars[-1] = bar
            elif not self._closed_bars or bar.ts > self._closed_bars[-1].ts:
                self._closed_bars.append(bar)
            if self._forming_bar is not None and self._forming_bar.ts <= bar.ts:
                self._forming_bar = None
        self._changed()

    def mark_signal(self, ts: pd.Timestamp, action: str) -> None:
        """Put ▲ under a buy candle and ▼ over a sell candle."""
        if action not in ("buy", "sell"):
            return
        self._signal_marks[pd.Timestamp(ts)] = action
        if self._closed_bars:
            oldest = self._closed_bars[0].ts
            self._signal_marks = {ts: a for ts, a in self._signal_marks.items() if ts >= oldest}
        self.refresh()

    def _changed(self) -> None:
        bars = self.bars
        if not bars:
            self.border_subtitle = ""
        else:
            last = bars[-1]
            change = f"  {(last.close / bars[-2].close - 1) * 100:+.2f}%" if len(bars) > 1 else ""
            self.border_subtitle = f"{format_krw(last.close)}{change}"
        self.refresh()

    # --- drawing -------------------------------------------------------------------------

    @property
    def bars(self) -> list[Bar]:
        return [*self._closed_bars, *([self._forming_bar] if self._forming_bar else [])]

    def render(self) -> Text:
        width, height = self.content_size
        bars = self.bars
        empty = self.get_component_rich_style("candle-chart--empty")
        if not bars:
            return Text("waiting for candles…", style=empty)
        axis_width = (
            max(
                len(format_krw(max(b.high for b in bars))),
                len(format_krw(min(b.low for b in bars))),
            )
            + 2
        )
        plot_width, plot_height = width - axis_width, height - 1  # last row: the time axis
        price_rows = plot_height - 2  # one row above and below for the signal markers
        if plot_width < 4 or price_rows < 3:
            return Text("chart needs more room", style=empty)
        step = 2  # a candle and a gap
        bars = bars[-(plot_width // step) :]
        high, low = max(b.high for b in bars), min(b.low for b in bars)
        if high <= low:
            high, low = high * 1.0005 + 1e-9, low * 0.9995 - 1e-9
        subrows = price_rows * 2

        def sub(price: float) -> int:
            return round((high - price) / (high - low) * (subrows - 1))

        chars = [[" "] * width for _ in range(height)]
        styles: list[list[Style | None]] = [[None] * width for _ in range(height)]
        styles_by_name = {
            name: self.get_component_rich_style(f"candle-chart--{name}")
            for name in ("up", "down", "forming", "axis", "last-up", "last-down", "buy", "sell")
        }
        first_x = plot_width - step * len(bars)
        for i, bar in enumerate(bars):
            x = first_x + i * step
            style = styles_by_name["up" if bar.up else "down"]
            if bar is self._forming_bar:
                style = style + styles_by_name["forming"]
            s_high, s_low = sub(bar.high), sub(bar.low)
            s_top, s_bottom = sub(max(bar.open, bar.close)), sub(min(bar.open, bar.close))
            for row in range(s_high // 2, s_low // 2 + 1):
                halves = []
                for s in (2 * row, 2 * row + 1):
                    halves.append(
                        _BODY
                        if s_top <= s <= s_bottom
                        else _WICK
                        if s_high <= s <= s_low
                        else _NONE
                    )
                chars[row + 1][x] = _GLYPHS[halves[0], halves[1]]
                styles[row + 1][x] = style
            mark = self._signal_marks.get(bar.ts)
            if mark == "buy":
                chars[s_low // 2 + 2][x], styles[s_low // 2 + 2][x] = "▲", styles_by_name["buy"]
            elif mark == "sell":
                chars[s_high // 2][x], styles[s_high // 2][x] = "▼", styles_by_name["sell"]

        self._draw_price_axis(
            chars, styles, plot_width, price_rows, high, low, bars[-1], styles_by_name
        )
        self._draw_time_axis(
            chars, styles, bars, first_x, step, plot_width, height - 1, styles_by_name["axis"]
        )
        text = Text(no_wrap=True, overflow="crop")
        for row in range(height):
            if row:
                text.append("\n")
            run_start = 0
            for col in range(1, width + 1):
                if col == width or styles[row][col] != styles[row][run_start]:
                    text.append("".join(chars[row][run_start:col]), styles[row][run_start] or "")
                    run_start = col
        return text

    @staticmethod
    def _draw_price_axis(
        chars: list[list[str]],
        styles: list[list[Style | None]],
        x: int,
        price_rows: int,
        high: float,
        low: float,
        last: Bar,
        styles_by_name: dict[str, Style],
    ) -> None:
        axis = styles_by_name["axis"]
        labels: dict[int, tuple[float, Style]] = {0: (high, axis), price_rows - 1: (low, axis)}
        gap = 4
        for row in range(gap, price_rows - gap + 1, gap):
            labels[row] = (high - (row / (price_rows - 1)) * (high - low), axis)
        last_row = round((high - last.close) / (high - low) * (price_rows - 1))
        labels = {
            r: v for r, v in labels.items() if abs(r - last_row) > 1 or r in (0, price_rows - 1)
        }
        labels[last_row] = (last.close, styles_by_name["last-up" if last.up else "last-down"])
        for row in range(price_rows):
            y = row + 1
            label = labels.get(row)
            chars[y][x] = "┤" if label else "│"
            styles[y][x] = axis
            if label:
                price, style = label
                for i, ch in enumerate(" " + format_krw(price)):
                    if x + 1 + i < len(chars[y]):
                        chars[y][x + 1 + i], styles[y][x + 1 + i] = ch, style

    @staticmethod
    def _draw_time_axis(
        chars: list[list[str]],
        styles: list[list[Style | None]],
        bars: list[Bar],
        first_x: int,
        step: int,
        plot_width: int,
        y: int,
        axis: Style,
    ) -> None:
        if len(bars) < 2:
            return
        spacing = min(b.ts - a.ts for a, b in pairwise(bars))
        bar_minutes = max(spacing.total_seconds() / 60, 1)
        # the smallest round interval that leaves room for a label between two ticks
        interval = next(
            (m for m in _TIME_STEPS_MIN if m / bar_minutes * step >= 10), _TIME_STEPS_MIN[-1]
        )
        daily = interval >= 1440
        free_from = 0
        for i, bar in enumerate(bars):
            minutes = int(bar.ts.timestamp() // 60)
            if minutes % interval:
                continue
            label = bar.ts.strftime("%m-%d" if daily else "%H:%M")
            x = first_x + i * step
            start = x - len(label) // 2
            if start < free_from or start + len(label) > plot_width:
                continue
            for j, ch in enumerate(label):
                chars[y][start + j], styles[y][start + j] = ch, axis
            free_from = start + len(label) + 2
