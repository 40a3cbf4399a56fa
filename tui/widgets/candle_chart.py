"""CandleChart: a candlestick chart drawn with Unicode blocks: a price axis, a time axis (KST,
or UTC), buy/sell markers, SMA/EMA/Bollinger overlays (braille lines) and one sub-pane
(volume or RSI), zoomed and scrolled back through the candles it holds.

The chart only draws: the screen loads it (the session's window, pages of stored candles)
and says which candles are live. It holds at most `MAX_CANDLES`: a page of older history
pushes the newest out (the chart is then no longer live), so scrolling back through years of
1-minute candles never grows memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tui.fmt import KST, fmt_price
from tui.widgets.chart_overlays import OVERLAYS, RSI_LENGTH, overlay_lines, rsi

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
# braille dots of a cell's left and right column, top to bottom (4 dot rows per text row)
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_BRAILLE = 0x2800
_EIGHTHS = " ▁▂▃▄▅▆▇█"
_TIME_STEPS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 10080, 43200)

# zoom levels: (candles merged into one column group, columns per group including the gap)
ZOOMS: tuple[tuple[int, int], ...] = ((8, 1), (4, 1), (2, 1), (1, 1), (1, 2), (1, 4))
DEFAULT_ZOOM = 4
SUB_PANES = ("volume", "rsi")
SUB_PANE_MIN_HEIGHT = 14  # below it the candles keep every row


class Bar(NamedTuple):
    ts: pd.Timestamp  # UTC
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0

    @classmethod
    def from_candle(cls, candle: Mapping[str, Any]) -> Bar:
        volume = candle.get("volume")
        return cls(
            utc(candle["ts"]),
            float(candle["open"]),
            float(candle["high"]),
            float(candle["low"]),
            float(candle["close"]),
            float(volume) if volume is not None and math.isfinite(float(volume)) else 0.0,
        )

    @property
    def up(self) -> bool:
        return self.close >= self.open


def utc(ts: Any) -> pd.Timestamp:
    """`ts` as a UTC timestamp (naive values are UTC, as the store keeps them)."""
    stamp = pd.Timestamp(ts)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def format_krw(price: float) -> str:
    """A KRW price to Upbit's tick, with thousands separators."""
    return fmt_price(price)


def compact(amount: float) -> str:
    """A volume in a few characters: 950, 12.3K, 4.5M."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if amount >= size:
            return f"{amount / size:.1f}{suffix}"
    return f"{amount:.3g}"


def _rows(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[Bar]:
    rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else records
    return [Bar.from_candle(row) for row in rows]


class _Group(NamedTuple):
    """The candles one column group draws: merged OHLCV, its index range, its marker."""

    bar: Bar
    last: int  # index of its newest candle in the chart's candles
    mark: str | None


class CandleChart(Widget):
    """Candles oldest to newest left to right (the forming one last, when live)."""

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
        "candle-chart--sma",
        "candle-chart--ema",
        "candle-chart--bb",
        "candle-chart--rsi",
    }
    DEFAULT_CSS = """
    CandleChart > .candle-chart--sma { color: $warning; }
    CandleChart > .candle-chart--ema { color: $accent; }
    CandleChart > .candle-chart--bb { color: $secondary; }
    CandleChart > .candle-chart--rsi { color: $primary; }
    """

    MAX_CANDLES = 4000  # held at most (the widest terminal shows 8 x ~300 merged)

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._candles: list[Bar] = []
        self._forming: Bar | None = None
        self._marks: dict[pd.Timestamp, str] = {}
        self.back = 0  # candles right of the view (0: the newest is shown)
        self.zoom = DEFAULT_ZOOM
        self.overlays: set[str] = {"sma", "ema"}
        self.sub_pane: str | None = "volume"
        self.utc = False  # the time axis in KST unless the user switched
        self.live = True  # the newest candle held is the series' newest: live candles extend it
        self.empty_text = "waiting for candles…"
        self._version = 0  # bumped on every change of the candles (the indicators' cache key)
        self._cache: tuple[int, dict[str, list[np.ndarray]], np.ndarray] | None = None

    # --- data in -------------------------------------------------------------------------

    def load(
        self,
        candles: pd.DataFrame | Iterable[Mapping[str, Any]],
        *,
        live: bool = True,
        keep_newer: bool = False,
    ) -> None:
        """Replace the chart's candles. `live`: they end at the series' newest (live candles
        extend them); `keep_newer`: keep candles held newer than the last loaded one (live
        candles that arrived while the page was being fetched)."""
        bars = _rows(candles)
        if keep_newer and live and bars:
            bars += [bar for bar in self._candles if bar.ts > bars[-1].ts]
        elif keep_newer and live and not bars:
            bars = list(self._candles)
        self._candles = bars[-self.MAX_CANDLES :]
        if not live or (
            self._forming is not None and self._candles and self._forming.ts <= self._candles[-1].ts
        ):
            self._forming = None
        if not keep_newer:
            self._forming = None
        self.live, self.back = live, 0
        self._changed()

    def clear(self, text: str = "waiting for candles…") -> None:
        """No candles (another market or unit is being loaded); `text` says why."""
        self._candles, self._forming, self._marks = [], None, {}
        self.back, self.live, self.empty_text = 0, True, text
        self._changed()

    def prepend(self, candles: pd.DataFrame | Iterable[Mapping[str, Any]]) -> int:
        """Add a page of older candles (scrolling back); the view stays on the candles it
        showed. Past MAX_CANDLES the newest are dropped (the chart is then not live).
        Returns how many were added."""
        first = self._candles[0].ts if self._candles else None
        older = [bar for bar in _rows(candles) if first is None or bar.ts < first]
        if not older:
            return 0
        bars = older + self._candles
        drop = max(0, len(bars) - self.MAX_CANDLES)
        if drop:
            bars = bars[:-drop]
            self.live, self._forming = False, None
            self.back = max(0, self.back - drop)
        self._candles = bars
        self._changed()
        return len(older)

    def extend(self, candles: pd.DataFrame | Iterable[Mapping[str, Any]], *, live: bool) -> int:
        """Add a page of newer candles (scrolling forward after a page back dropped them);
        `live`: the page reaches the series' newest. Returns how many were added."""
        last = self._candles[-1].ts if self._candles else None
        newer = [bar for bar in _rows(candles) if last is None or bar.ts > last]
        bars = self._candles + newer
        drop = max(0, len(bars) - self.MAX_CANDLES)
        self._candles = bars[drop:]
        self.back += len(newer)
        self.live = live
        self._changed()
        return len(newer)

    def add_candle(self, candle: Mapping[str, Any], closed: bool) -> None:
        """A live candle (closed, or the one forming); ignored while the chart shows a
        stretch of history that does not reach the newest candles."""
        if not self.live:
            return
        bar = Bar.from_candle(candle)
        if not closed:
            if not self._candles or bar.ts > self._candles[-1].ts:
                self._forming = bar
        else:
            if self._candles and self._candles[-1].ts == bar.ts:
                self._candles[-1] = bar
            elif not self._candles or bar.ts > self._candles[-1].ts:
                self._candles.append(bar)
                if len(self._candles) > self.MAX_CANDLES:
                    del self._candles[0]
                if self.back:
                    self.back += 1  # scrolled back: the view stays where the user put it
            if self._forming is not None and self._forming.ts <= bar.ts:
                self._forming = None
        self._changed()

    def mark_signal(self, ts: Any, action: str) -> None:
        """Put ▲ under a buy candle and ▼ over a sell candle."""
        self.add_marks([(ts, action)])

    def add_marks(self, marks: Iterable[tuple[Any, str]]) -> None:
        """Markers of many signals at once (the stored signals of the market)."""
        for ts, action in marks:
            if action in ("buy", "sell"):
                self._marks[utc(ts)] = action
        if self._candles and len(self._marks) > self.MAX_CANDLES:
            oldest = self._candles[0].ts
            self._marks = {ts: a for ts, a in self._marks.items() if ts >= oldest}
        self.refresh()

    @property
    def marks(self) -> dict[pd.Timestamp, str]:
        return dict(self._marks)

    def _changed(self) -> None:
        self._version += 1
        bars = self.bars
        if not bars:
            self.border_subtitle = ""
        else:
            last = bars[-1]
            change = f"  {(last.close / bars[-2].close - 1) * 100:+.2f}%" if len(bars) > 1 else ""
            back = f" · {self.back} back" if self.back else ""
            self.border_subtitle = f"{format_krw(last.close)}{change}{back}"
        self.refresh()

    # --- view ----------------------------------------------------------------------------

    @property
    def bars(self) -> list[Bar]:
        return [*self._candles, *([self._forming] if self._forming else [])]

    @property
    def per_group(self) -> int:
        return ZOOMS[self.zoom][0]

    @property
    def shown(self) -> int:
        """How many candles fit in the plot at the current zoom (at the current size)."""
        per, step = ZOOMS[self.zoom]
        return max(1, self._plot_width(self.bars) // step) * per

    def scroll_by(self, candles: int) -> None:
        """Move the view `candles` back (positive) or forward, within the candles held."""
        most = max(0, len(self.bars) - self.shown)
        self.back = min(most, max(0, self.back + candles))
        self._changed()

    def scroll_to_oldest(self) -> None:
        self.back = max(0, len(self.bars) - self.shown)
        self._changed()

    @property
    def at_oldest(self) -> bool:
        """The view reaches the oldest candle held (a page back would be needed)."""
        return self.back >= len(self.bars) - self.shown

    def set_zoom(self, level: int) -> None:
        self.zoom = min(len(ZOOMS) - 1, max(0, level))
        self.back = min(self.back, max(0, len(self.bars) - self.shown))
        self._changed()

    def toggle_overlay(self, key: str) -> bool:
        """Show or hide overlay `key` (sma, ema, bb); whether it is shown now."""
        if key in self.overlays:
            self.overlays.discard(key)
        else:
            self.overlays.add(key)
        self.refresh()
        return key in self.overlays

    def next_sub_pane(self) -> str | None:
        """Switch the sub-pane: volume -> RSI -> volume."""
        at = SUB_PANES.index(self.sub_pane) if self.sub_pane in SUB_PANES else -1
        self.sub_pane = SUB_PANES[(at + 1) % len(SUB_PANES)]
        self.refresh()
        return self.sub_pane

    def indicators(self) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
        """Every overlay's lines and the RSI over the candles held (cached per change)."""
        if self._cache is None or self._cache[0] != self._version:
            closes = np.array([bar.close for bar in self.bars], dtype=np.float64)
            lines = {o.key: overlay_lines(o.key, closes) for o in OVERLAYS}
            self._cache = (self._version, lines, rsi(closes))
        return self._cache[1], self._cache[2]

    # --- drawing -------------------------------------------------------------------------

    def _axis_width(self, bars: list[Bar]) -> int:
        if not bars:
            return 0
        high = max(bar.high for bar in bars)
        low = min(bar.low for bar in bars)
        return max(len(format_krw(high)), len(format_krw(low)), 5) + 2

    def _plot_width(self, bars: list[Bar]) -> int:
        return self.content_size.width - self._axis_width(bars)

    def _groups(self, bars: list[Bar], count: int) -> list[_Group]:
        """The `count` column groups that end `back` candles before the newest."""
        per = self.per_group
        end = len(bars) - min(self.back, max(0, len(bars) - 1))
        groups: list[_Group] = []
        hi = end
        while hi > 0 and len(groups) < count:
            lo = max(0, hi - per)
            chunk = bars[lo:hi]
            merged = Bar(
                chunk[0].ts,
                chunk[0].open,
                max(bar.high for bar in chunk),
                min(bar.low for bar in chunk),
                chunk[-1].close,
                sum(bar.volume for bar in chunk),
            )
            marks = [self._marks[bar.ts] for bar in chunk if bar.ts in self._marks]
            groups.append(_Group(merged, hi - 1, marks[-1] if marks else None))
            hi = lo
        groups.reverse()
        return groups

    def render(self) -> Text:
        width, height = self.content_size
        bars = self.bars
        empty = self.get_component_rich_style("candle-chart--empty")
        if not bars:
            return Text(self.empty_text, style=empty)
        step = ZOOMS[self.zoom][1]
        plot_width = width - self._axis_width(bars)
        sub_rows = max(4, height // 4) if self.sub_pane and height >= SUB_PANE_MIN_HEIGHT else 0
        main_rows = height - 1 - sub_rows  # last row: the time axis
        price_rows = main_rows - 2  # one row above and below for the signal markers
        if plot_width < 4 or price_rows < 3:
            return Text("chart needs more room", style=empty)
        groups = self._groups(bars, plot_width // step)
        lines, rsi_line = self.indicators()
        shown = [key for key in (o.key for o in OVERLAYS) if key in self.overlays]
        at = [g.last for g in groups]
        values = {key: [line[at] for line in lines[key]] for key in shown}
        high = max(g.bar.high for g in groups)
        low = min(g.bar.low for g in groups)
        for key in shown:
            for line in values[key]:
                finite = line[np.isfinite(line)]
                if len(finite):
                    high, low = max(high, float(finite.max())), min(low, float(finite.min()))
        if high <= low:
            high, low = high * 1.0005 + 1e-9, low * 0.9995 - 1e-9

        canvas = _Canvas(width, height)
        styles = {
            name: self.get_component_rich_style(f"candle-chart--{name}")
            for name in (
                "up",
                "down",
                "forming",
                "axis",
                "last-up",
                "last-down",
                "buy",
                "sell",
                "sma",
                "ema",
                "bb",
                "rsi",
            )
        }
        first_x = plot_width - step * len(groups)
        centre = 1 if step >= 4 else 0
        subrows = price_rows * 2

        def sub(price: float) -> int:
            return round((high - price) / (high - low) * (subrows - 1))

        forming = self._forming
        for i, group in enumerate(groups):
            bar = group.bar
            x = first_x + i * step
            style = styles["up" if bar.up else "down"]
            if forming is not None and group.last == len(bars) - 1:
                style = style + styles["forming"]
            s_high, s_low = sub(bar.high), sub(bar.low)
            s_top, s_bottom = sub(max(bar.open, bar.close)), sub(min(bar.open, bar.close))
            for col in range(x, x + (3 if step >= 4 else 1)):
                wick = col == x + centre
                for row in range(s_high // 2, s_low // 2 + 1):
                    halves = tuple(
                        _BODY
                        if s_top <= s <= s_bottom
                        else _WICK
                        if wick and s_high <= s <= s_low
                        else _NONE
                        for s in (2 * row, 2 * row + 1)
                    )
                    glyph = _GLYPHS[halves[0], halves[1]]
                    if glyph != " ":
                        canvas.put(row + 1, col, glyph, style)
            if group.mark == "buy":
                canvas.put(s_low // 2 + 2, x + centre, "▲", styles["buy"])
            elif group.mark == "sell":
                canvas.put(s_high // 2, x + centre, "▼", styles["sell"])

        def price_dot(value: float) -> int:
            return round((high - value) / (high - low) * (price_rows * 4 - 1))

        for key in shown:
            for line in values[key]:
                canvas.line(
                    line, first_x, step, centre, 1, price_rows, plot_width, price_dot, styles[key]
                )
        self._draw_legend(canvas, shown, plot_width, styles)
        last_shown = groups[-1].bar
        _draw_price_axis(canvas, plot_width, price_rows, high, low, last_shown, styles)
        if sub_rows:
            top = main_rows
            if self.sub_pane == "rsi":
                self._draw_rsi(
                    canvas, rsi_line[at], top, sub_rows, first_x, step, centre, plot_width, styles
                )
            else:
                self._draw_volume(canvas, groups, top, sub_rows, first_x, step, plot_width, styles)
        self._draw_time_axis(
            canvas, groups, first_x + centre, step, plot_width, height - 1, styles["axis"]
        )
        return canvas.text()

    @staticmethod
    def _draw_legend(
        canvas: _Canvas, shown: list[str], plot_width: int, styles: dict[str, Style]
    ) -> None:
        x = 0
        for overlay in OVERLAYS:
            if overlay.key not in shown:
                continue
            label = f"{overlay.legend} "
            if x + len(label) > plot_width:
                break
            for j, ch in enumerate(label):
                if canvas.chars[0][x + j] == " ":
                    canvas.put(0, x + j, ch, styles[overlay.style])
            x += len(label)

    def _draw_volume(
        self,
        canvas: _Canvas,
        groups: list[_Group],
        top: int,
        rows: int,
        first_x: int,
        step: int,
        plot_width: int,
        styles: dict[str, Style],
    ) -> None:
        axis = styles["axis"]
        most = max((g.bar.volume for g in groups), default=0.0)
        canvas.rule(top, plot_width, " VOL ", axis)
        canvas.label(top, plot_width, "┼", compact(most), axis)
        body = rows - 1
        if most <= 0:
            return
        for i, group in enumerate(groups):
            eighths = round(group.bar.volume / most * body * 8)
            style = styles["up" if group.bar.up else "down"]
            x = first_x + i * step
            for level in range(body):
                fill = min(8, eighths - level * 8)
                if fill <= 0:
                    break
                for col in range(x, x + (3 if step >= 4 else 1)):
                    canvas.put(top + body - level, col, _EIGHTHS[fill], style)
        for row in range(top + 1, top + rows):
            canvas.put(row, plot_width, "│", axis)

    def _draw_rsi(
        self,
        canvas: _Canvas,
        values: np.ndarray,
        top: int,
        rows: int,
        first_x: int,
        step: int,
        centre: int,
        plot_width: int,
        styles: dict[str, Style],
    ) -> None:
        axis = styles["axis"]
        newest = values[-1] if len(values) else math.nan
        now = f" {newest:.1f}" if math.isfinite(newest) else " -"
        canvas.rule(top, plot_width, f" RSI{RSI_LENGTH}{now} ", axis)
        canvas.put(top, plot_width, "┼", axis)
        body = rows - 1

        def dot(value: float) -> int:
            return round((100.0 - value) / 100.0 * (body * 4 - 1))

        for level in (70, 30):
            row = top + 1 + dot(level) // 4
            for col in range(plot_width):
                canvas.put(row, col, "┈", axis)
            canvas.label(row, plot_width, "┤", str(level), axis)
        for row in range(top + 1, top + rows):
            if canvas.chars[row][plot_width] == " ":
                canvas.put(row, plot_width, "│", axis)
        canvas.line(
            values,
            first_x,
            step,
            centre,
            top + 1,
            body,
            plot_width,
            dot,
            styles["rsi"],
            over_guides=True,
        )

    def _draw_time_axis(
        self,
        canvas: _Canvas,
        groups: list[_Group],
        first_x: int,
        step: int,
        plot_width: int,
        y: int,
        axis: Style,
    ) -> None:
        bars = self.bars
        if len(bars) < 2:
            return
        gaps = [(b.ts - a.ts).total_seconds() for a, b in zip(bars[-50:], bars[-49:], strict=False)]
        bar_minutes = max(min(g for g in gaps if g > 0) / 60 if any(g > 0 for g in gaps) else 1, 1)
        per = self.per_group
        # the smallest round interval that leaves room for a label between two ticks
        interval = next(
            (m for m in _TIME_STEPS_MIN if m / (bar_minutes * per) * step >= 12),
            _TIME_STEPS_MIN[-1],
        )
        daily = interval >= 1440
        zone = UTC if self.utc else KST
        shift = 0 if self.utc else 9 * 60  # minutes KST is ahead (the buckets' boundaries)
        free_from = 0
        previous: int | None = None
        for i, group in enumerate(groups):
            minutes = int(group.bar.ts.timestamp() // 60) + shift
            bucket = minutes // interval
            crossed = previous is not None and bucket != previous
            previous = bucket
            if not crossed and minutes % interval:
                continue
            local = group.bar.ts.to_pydatetime().astimezone(zone)
            label = local.strftime("%m-%d" if daily else "%H:%M")
            x = first_x + i * step
            start = x - len(label) // 2
            if start < free_from or start + len(label) > plot_width:
                continue
            for j, ch in enumerate(label):
                canvas.put(y, start + j, ch, axis)
            free_from = start + len(label) + 2


def _draw_price_axis(
    canvas: _Canvas,
    x: int,
    price_rows: int,
    high: float,
    low: float,
    last: Bar,
    styles: dict[str, Style],
) -> None:
    axis = styles["axis"]
    labels: dict[int, tuple[float, Style]] = {0: (high, axis), price_rows - 1: (low, axis)}
    gap = 4
    for row in range(gap, price_rows - gap + 1, gap):
        labels[row] = (high - (row / (price_rows - 1)) * (high - low), axis)
    last_row = round((high - last.close) / (high - low) * (price_rows - 1))
    labels = {r: v for r, v in labels.items() if abs(r - last_row) > 1 or r in (0, price_rows - 1)}
    labels[last_row] = (last.close, styles["last-up" if last.up else "last-down"])
    for row in range(price_rows):
        y = row + 1
        label = labels.get(row)
        if label:
            price, style = label
            canvas.put(y, x, "┤", axis)
            for i, ch in enumerate(" " + format_krw(price)):
                canvas.put(y, x + 1 + i, ch, style)
        else:
            canvas.put(y, x, "│", axis)


class _Canvas:
    """A grid of characters and their styles, turned into one Text at the end."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.chars = [[" "] * width for _ in range(height)]
        self.styles: list[list[Style | None]] = [[None] * width for _ in range(height)]

    def put(self, row: int, col: int, ch: str, style: Style | None) -> None:
        if 0 <= row < self.height and 0 <= col < self.width:
            self.chars[row][col], self.styles[row][col] = ch, style

    def text(self) -> Text:
        """The grid as one Text, a span per run of one style."""
        text = Text(no_wrap=True, overflow="crop")
        for row in range(self.height):
            if row:
                text.append("\n")
            chars, styles = self.chars[row], self.styles[row]
            run_start = 0
            for col in range(1, self.width + 1):
                if col == self.width or styles[col] != styles[run_start]:
                    text.append("".join(chars[run_start:col]), styles[run_start] or "")
                    run_start = col
        return text

    def rule(self, row: int, width: int, title: str, style: Style) -> None:
        """A horizontal rule across the plot with `title` at its left."""
        for col in range(width):
            self.put(row, col, "─", style)
        for j, ch in enumerate(title[: max(0, width - 1)]):
            self.put(row, 1 + j, ch, style)

    def label(self, row: int, x: int, tick: str, text: str, style: Style) -> None:
        self.put(row, x, tick, style)
        for j, ch in enumerate(" " + text):
            self.put(row, x + 1 + j, ch, style)

    def line(
        self,
        values: np.ndarray,
        first_x: int,
        step: int,
        centre: int,
        top: int,
        rows: int,
        plot_width: int,
        dot: Any,
        style: Style,
        *,
        over_guides: bool = False,
    ) -> None:
        """A braille line through `values` (one per column group, NaN: no value), sampled
        twice per column between the groups' centres; cells a candle occupies stay."""
        count = len(values)
        if count == 0:
            return
        for col in range(max(0, first_x), plot_width):
            for half in (0, 1):
                position = (col + 0.25 + 0.5 * half - first_x - centre - 0.5) / step
                value = _interpolate(values, position)
                if value is None:
                    continue
                d = dot(value)
                if not 0 <= d < rows * 4:
                    continue
                row = top + d // 4
                existing = self.chars[row][col]
                bits = 0
                if existing != " " and not (over_guides and existing == "┈"):
                    bits = ord(existing) - _BRAILLE
                    if not 0 <= bits < 256:
                        continue  # a candle's glyph: the candle stays on top
                self.put(row, col, chr(_BRAILLE | bits | _DOTS[half][d % 4]), style)


def _interpolate(values: np.ndarray, position: float) -> float | None:
    """The value between group centres at fractional group index `position`."""
    count = len(values)
    if position < -0.5 or position > count - 0.5:
        return None
    at = min(max(position, 0.0), count - 1.0)
    lo = math.floor(at)
    hi = min(lo + 1, count - 1)
    a, b = float(values[lo]), float(values[hi])
    if not math.isfinite(a) or not math.isfinite(b):
        nearest = values[round(at)]
        return float(nearest) if math.isfinite(nearest) else None
    t = at - lo
    return a + (b - a) * t
