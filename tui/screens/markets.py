"""MarketsScreen: every watched KRW market in one table (issue 13, screen 1).

A row per market of the facade's `market_board` (engine/service/board.py): last price to
Upbit's tick, 24 h change, KRW value traded over 24 h, a sparkline of the newest closes, the
decision (action, confidence, model or rule), the paper position and a drift badge.

Updates are coalesced: the board is polled about once a second in a worker, and the session's
signals and closed candles patch the rows they are about as they come; all of it lands in
`_rows`, and a timer applies what changed to the table at most once per `REFRESH_S` (cells
made again only for the rows that changed), so 200 live markets never flood the screen. The
table is the project's BoardTable (tui/widgets/board_table.py): drawing it costs a few ms,
where a DataTable re-rendered every visible cell on any change (~50 ms, keys waiting). The cursor stays on
its market and the filter stays across updates.

Keys: `/` filters (market, action or source; `Esc` clears), `s` cycles the sort column and
`r` reverses it (or click a header: again reverses), `f` stars a market (starred ones sort
first; kept in `favourites.json` under the upquant home, so they survive a restart),
`Enter` opens the chart of the market under the cursor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, Static

from tui import messages
from tui.fmt import error_text, fmt_age, fmt_krw, fmt_pct, fmt_price, fmt_time, zone
from tui.screens.base import StationScreen
from tui.widgets.board_table import BoardColumn, BoardTable
from tui.widgets.sparkline import sparkline

if TYPE_CHECKING:
    from engine.service.board import BoardRow, MarketBoard

POLL_S = 1.0  # the board is asked for this often while the screen is shown
REFRESH_S = 1.0  # the table takes what changed at most this often
SPARK = 30  # closes each row carries
WIDE = 120  # from this many columns: every column and a wide sparkline
WIDE_TREND = 15  # the sparkline's width when WIDE
PANEL = 156  # from this many columns: the detail panel beside the table
DRIFT_RECENT = timedelta(hours=24)  # a drift event this recent shows a badge


def compact(value: float | None) -> str:
    """A large amount in 4-6 characters: 307B, 1.2M, 950K, 12."""
    if value is None or not math.isfinite(value):
        return "-"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f}{suffix}" if abs(scaled) < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.0f}"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    narrow: bool  # shown below WIDE columns too
    sort: Callable[[BoardRow], Any]  # the value rows sort by (None sorts last)


def _action_rank(row: BoardRow) -> Any:
    return None if row.action is None else ("buy", "hold", "sell").index(row.action)


COLUMNS: tuple[Column, ...] = (
    Column("market", "Market", 10, True, lambda r: r.market),
    Column("price", "Price", 12, True, lambda r: r.last_price),
    Column("change", "24h", 7, True, lambda r: r.change_24h),
    Column("value", "₩24h", 6, True, lambda r: r.value_24h),
    Column("trend", "Trend", 6, True, lambda r: r.change_24h),
    Column("signal", "Signal", 10, True, _action_rank),
    Column("source", "Source", 20, False, lambda r: r.source),
    Column("position", "Pos ₩", 6, True, lambda r: r.position_value),
    Column("pnl", "PnL ₩", 9, False, lambda r: r.unrealised_pnl),
    Column("drift", "Drift", 5, True, lambda r: r.drift_at),
)
BY_KEY = {column.key: column for column in COLUMNS}


class Favourites:
    """The starred markets, kept as JSON under the upquant home (a client's preference: it
    lives beside the store whether the TUI hosts the server or attaches to one)."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            from store.db import home

            path = home() / "favourites.json"
        self.path = path
        try:
            self.markets = set(json.loads(path.read_text())["markets"])
        except (OSError, ValueError, KeyError, TypeError):
            self.markets = set()  # none yet, or unreadable: start without

    def toggle(self, market: str) -> bool:
        """Star or unstar `market` and save; whether it is starred now."""
        self.markets.symmetric_difference_update({market})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"markets": sorted(self.markets)}))
        tmp.replace(self.path)
        return market in self.markets


class MarketsScreen(StationScreen):
    AUTO_FOCUS = "#board"  # not the filter (hidden until `/`)
    DEFAULT_CSS = """
    MarketsScreen #board-filter { display: none; height: 3; }
    MarketsScreen.-filtering #board-filter { display: block; }
    MarketsScreen #board-body { height: 1fr; }
    MarketsScreen #board { width: 1fr; height: 1fr; }
    MarketsScreen #board-panel {
        display: none; width: 36; height: 1fr; border-left: solid $primary;
        padding: 0 1;
    }
    MarketsScreen.-panel #board-panel { display: block; }
    MarketsScreen #board-detail { height: 1; padding: 0 1; color: $text-muted; }
    MarketsScreen.-panel #board-detail { display: none; }
    MarketsScreen #board-status { height: 1; padding: 0 1; background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort_next", "Sort column"),
        Binding("r", "sort_reverse", "Reverse sort", show=False),
        Binding("f", "favourite", "Favourite"),
        Binding("enter", "open_chart", "Open chart"),
        Binding("escape", "escape", "Clear filter / back", show=False),
    ]

    def __init__(self, favourites: Favourites | None = None) -> None:
        super().__init__()
        self._favourites = favourites
        self.board: MarketBoard | None = None
        self._rows: dict[str, BoardRow] = {}  # every market the board or the session gave
        self._drawn: dict[str, tuple[Any, ...]] = {}  # what each row's cells were made of
        self._dirty = False
        self._wide: bool | None = None
        self.sort_key = "market"
        self.reverse = False
        self.refreshes = 0  # table updates applied (at most one per REFRESH_S)
        self._error: str | None = None
        self._restore: str | None = None  # the cursor's market across a rebuild
        self._asking = False  # a poll is in flight

    @property
    def favourites(self) -> Favourites:
        if self._favourites is None:
            self._favourites = Favourites()
        return self._favourites

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter: market, action or source", id="board-filter")
        with Horizontal(id="board-body"):
            yield BoardTable(id="board")
            yield Static(id="board-panel")
        yield Static(id="board-detail")
        yield Static(id="board-status")
        yield Footer()

    @property
    def table(self) -> BoardTable:
        return self.query_one("#board", BoardTable)

    @property
    def filter_text(self) -> str:
        return self.query_one("#board-filter", Input).value.strip()

    def on_mount(self) -> None:
        self._layout(self.app.size.width)
        if self.station.facade is None:
            self.query_one("#board-status", Static).update(
                "the store is not available: this TUI runs a session without it"
                " (start it with `upquant tui`)"
            )
            return
        self.table.loading = True
        self.station.listen(self)
        self.refresh_timer = self.set_interval(REFRESH_S, self.flush)
        self.poll_timer = self.set_interval(POLL_S, self._poll)
        self._poll()

    # --- data in ---------------------------------------------------------------------------

    def _poll(self) -> None:
        """Ask for the board (a short worker per poll, none while one is in flight; none
        while another screen is shown, once the first board came)."""
        if self._asking or (self.board is not None and not self.is_current):
            return
        self._asking = True
        self.run_worker(self._ask(), group="board")

    async def _ask(self) -> None:
        from engine.service.board import BoardRequest

        try:
            board = await self.station.call("market_board", BoardRequest(spark=SPARK))
        except Exception as exc:  # noqa: BLE001 - shown; the next poll tries again
            self._failed(exc)
        else:
            first = self.board is None
            self.ingest(board)
            if first:
                self.flush()  # the first board at once; later ones at the refresh interval
        finally:
            self._asking = False

    def _failed(self, exc: BaseException) -> None:
        text = error_text(exc)
        if text != self._error:  # said once, not every second
            self.notify(text, title="market board", severity="error")
        self._error = text
        self.table.loading = False
        self._status()

    def ingest(self, board: MarketBoard) -> None:
        """Take a board: its rows replace the ones held; the table follows at the next flush."""
        if board == self.board and self._error is None:
            return  # the same board again (nothing written since): no work
        self.board, self._error = board, None
        self._rows = {row.market: row for row in board.rows}
        self._dirty = True

    def on_signal_received(self, message: messages.SignalReceived) -> None:
        if not self.is_current:
            return  # hidden: the poll on showing it again brings the rows up to date
        signal = message.signal
        row = self._rows.get(signal.market)
        if row is not None:
            self._rows[signal.market] = row.model_copy(
                update={
                    "action": signal.action,
                    "confidence": signal.confidence,
                    "source": signal.source,
                    "source_kind": "rule" if signal.model_id is None else "model",
                    "reason": signal.reason,
                    "decided_at": signal.ts.to_pydatetime(),
                }
            )
            self._dirty = True

    def on_candle_closed(self, message: messages.CandleClosed) -> None:
        if not self.is_current:
            return
        candle = message.candle
        row = self._rows.get(str(candle.get("market")))
        if row is not None and candle.get("close") is not None:
            price = float(candle["close"])
            self._rows[row.market] = row.model_copy(update={"last_price": price})
            self._dirty = True

    def on_screen_resume(self) -> None:
        if self.board is not None:
            self._poll()  # what changed while another screen was shown

    def on_clock_changed(self, _message: messages.ClockChanged) -> None:
        self._detail()
        self._status()

    # --- the table ------------------------------------------------------------------------

    def flush(self) -> None:
        """Apply what changed since the last flush to the table (nothing: no work)."""
        if not self._dirty or self.board is None:
            return
        self._dirty = False
        self.refreshes += 1
        table = self.table
        table.loading = False
        cursor = self._cursor_market()
        wanted = self._ordered()
        wanted_set = set(wanted)
        for market in [m for m in self._drawn if m not in wanted_set]:
            table.remove_row(market)
            del self._drawn[market]
        minute = self.station.now().replace(second=0, microsecond=0)  # the drift badge's age
        starred = self.favourites.markets
        for market in wanted:
            row = self._rows[market]
            drawn = (row, market in starred, minute)
            if self._drawn.get(market) != drawn:  # most rows, most polls: the same, no cells made
                table.set_row(market, self._cells(row))
                self._drawn[market] = drawn
        if table.keys != wanted:
            table.set_order(wanted)
        if cursor is not None and cursor in wanted_set:
            table.move_to(cursor)
        self._detail()
        self._status()

    def _columns(self) -> list[Column]:
        return [c for c in COLUMNS if self._wide or c.narrow]

    def _rebuild(self) -> None:
        """Columns anew (the width crossed WIDE): every row is added again at the next flush."""
        cursor = self._cursor_market()
        self.table.set_columns(
            BoardColumn(c.key, c.label, self._trend_width() if c.key == "trend" else c.width)
            for c in self._columns()
        )
        self._drawn = {}
        self._dirty = True
        self._restore = cursor
        self.flush()

    def _trend_width(self) -> int:
        return WIDE_TREND if self._wide else BY_KEY["trend"].width

    def _ordered(self) -> list[str]:
        """The markets shown: those the filter matches, starred first, then by the sort
        column (rows without a value last, whichever the direction)."""
        needle = self.filter_text.lower()
        rows = [
            row
            for row in self._rows.values()
            if not needle
            or needle in row.market.lower()
            or needle in (row.action or "")
            or needle in (row.source or "").lower()
        ]
        column = BY_KEY[self.sort_key]
        known = [r for r in rows if column.sort(r) is not None]
        unknown = [r for r in rows if column.sort(r) is None]
        known.sort(key=lambda r: (column.sort(r), r.market), reverse=self.reverse)
        unknown.sort(key=lambda r: r.market)
        starred = self.favourites.markets
        ordered = [*known, *unknown]
        return [r.market for r in ordered if r.market in starred] + [
            r.market for r in ordered if r.market not in starred
        ]

    def _cells(self, row: BoardRow) -> tuple[Any, ...]:
        """The row's cells for the columns shown (compared with what the table holds)."""
        star = "★" if row.market in self.favourites.markets else " "
        board_unit = None if self.board is None else self.board.unit
        values: dict[str, Any] = {
            "market": Text.assemble(
                (star + row.market, "bold" if star != " " else ""),
                (f" {row.unit}m" if board_unit not in (None, row.unit) else "", "dim"),
            ),
            "price": Text(fmt_price(row.last_price), justify="right"),
            "change": Text(
                fmt_pct(row.change_24h),
                style=_updown(row.change_24h),
                justify="right",
            ),
            "value": Text(
                ("~" if row.value_estimated else "") + compact(row.value_24h), justify="right"
            ),
            "trend": sparkline(row.spark, self._trend_width()),
            "signal": _signal(row, self._wide or False),
            "source": Text(row.source or "-", style="dim" if row.source_kind == "rule" else ""),
            "position": Text(compact(row.position_value) if row.position else "-", justify="right"),
            "pnl": Text(
                fmt_krw(row.unrealised_pnl, signed=True) if row.position else "-",
                style=_updown(row.unrealised_pnl),
                justify="right",
            ),
            "drift": self._drift(row),
        }
        return tuple(values[c.key] for c in self._columns())

    def _drift(self, row: BoardRow) -> Text:
        if row.drift_at is None:
            return Text("-", style="dim")
        if self.station.now() - row.drift_at <= DRIFT_RECENT:
            return Text("⚠" + fmt_age(row.drift_at, self.station.now()), style="bold yellow")
        return Text("·" + fmt_age(row.drift_at, self.station.now()), style="dim")

    def _cursor_market(self) -> str | None:
        if self._restore is not None:
            restore, self._restore = self._restore, None
            return restore
        return self.table.cursor_key

    @property
    def cursor_market(self) -> str | None:
        """The market under the cursor (None: no rows)."""
        return self._cursor_market()

    # --- what the cursor row says ----------------------------------------------------------

    def _detail(self) -> None:
        market = self._cursor_market()
        row = self._rows.get(market) if market is not None else None
        line, panel = ("", "") if row is None else self._describe(row)
        self.query_one("#board-detail", Static).update(line)
        self.query_one("#board-panel", Static).update(panel)

    def _describe(self, row: BoardRow) -> tuple[Text, Text]:
        """One line (narrow) and the panel's lines (wide) about `row`."""
        utc = self.station.utc
        decision = "no decision yet"
        if row.action is not None:
            decision = f"{row.action} {row.confidence or 0:.2f} by {row.source} ({row.source_kind})"
        line = Text(f"{row.market}: {decision}")
        if row.reason:
            line.append(f" · {row.reason}", style="dim")
        lines = [
            Text(f"{row.market} {row.unit}m", style="bold"),
            Text(f"last   {fmt_price(row.last_price)}  {fmt_time(row.last_ts, utc=utc)}"),
            Text(f"24h    {fmt_pct(row.change_24h)}  ({row.day_candles} candles)"),
            Text(f"volume {row.volume_24h or 0:,.2f} units"),
            Text(f"value  {fmt_krw(row.value_24h)} KRW"),
            Text("       (estimated: close×volume)" if row.value_estimated else ""),
            Text(""),
            Text(f"signal {decision}"),
        ]
        if row.decided_at is not None:
            lines.append(Text(f"at     {fmt_time(row.decided_at, utc=utc)}"))
        if row.reason:
            lines.append(Text(row.reason, style="dim"))
        lines.append(Text(""))
        if row.position:
            lines.append(
                Text(
                    f"paper  {row.position:,.6g} units, {fmt_krw(row.position_value)} KRW,"
                    f" PnL {fmt_krw(row.unrealised_pnl, signed=True)}"
                )
            )
        else:
            lines.append(Text("paper  flat"))
        if row.drift_at is not None:
            lines.append(
                Text(
                    f"drift  {row.drift} {fmt_age(row.drift_at, self.station.now())} ago",
                    style="yellow",
                )
            )
        return line, Text("\n").join(lines)

    def _status(self) -> None:
        board = self.board
        if board is None:
            text = "loading the market board…" if self._error is None else f"⚠ {self._error}"
        else:
            source = f"{board.mode} watchlist" if board.live else "stored"
            arrow = "↑" if self.reverse else "↓"
            shown = self.table.row_count
            count = f"{shown}/{len(self._rows)}" if shown != len(self._rows) else f"{shown}"
            text = (
                f"{count} markets · {source} · {board.unit}m · by {BY_KEY[self.sort_key].label}"
                f" {arrow} · {fmt_time(self.station.now(), utc=self.station.utc, fmt='%H:%M:%S')}"
                f" {zone(self.station.utc)}"
            )
            if any(row.value_estimated for row in self._rows.values()):
                text += " · ~₩ = close×volume"
            if self._error is not None:
                text = f"⚠ {self._error} · " + text
        self.query_one("#board-status", Static).update(text)

    # --- layout ---------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._layout(event.size.width)

    def _layout(self, width: int) -> None:
        self.set_class(width >= PANEL, "-panel")
        wide = width >= WIDE
        if wide != self._wide:
            self._wide = wide
            self._rebuild()

    # --- actions --------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.add_class("-filtering")
        self.query_one("#board-filter", Input).focus()

    @on(Input.Changed, "#board-filter")
    def _filter_changed(self) -> None:
        self._dirty = True
        self.flush()

    @on(Input.Submitted, "#board-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_escape(self) -> None:
        """Clear the filter (and close it); without one, back to the screen before."""
        field = self.query_one("#board-filter", Input)
        if field.value or self.has_class("-filtering"):
            field.value = ""
            self.remove_class("-filtering")
            self.table.focus()
            self._dirty = True
            self.flush()
        else:
            self.station.action_go_back()

    def _sort(self, key: str, reverse: bool) -> None:
        self.sort_key, self.reverse = key, reverse
        self._dirty = True
        self.flush()

    def action_sort_next(self) -> None:
        keys = [c.key for c in self._columns()]
        at = keys.index(self.sort_key) if self.sort_key in keys else -1
        self._sort(keys[(at + 1) % len(keys)], False)

    def action_sort_reverse(self) -> None:
        self._sort(self.sort_key, not self.reverse)

    @on(BoardTable.HeaderClicked, "#board")
    def _header(self, event: BoardTable.HeaderClicked) -> None:
        key = event.column
        self._sort(key, not self.reverse if key == self.sort_key else False)

    def action_favourite(self) -> None:
        market = self._cursor_market()
        if market is None:
            return
        starred = self.favourites.toggle(market)
        self.notify(f"{market} {'starred' if starred else 'unstarred'}")
        self._dirty = True
        self.flush()

    @on(BoardTable.Highlighted, "#board")
    def _highlighted(self) -> None:
        self._detail()

    @on(BoardTable.Selected, "#board")
    def _selected(self, event: BoardTable.Selected) -> None:
        event.stop()
        self._open(event.key)

    def action_open_chart(self) -> None:
        market = self._cursor_market()
        if market is not None:
            self._open(market)

    def _open(self, market: str) -> None:
        row = self._rows.get(market)
        self.station.open_chart(market, None if row is None else row.unit)


def _updown(value: float | None) -> str:
    if value is None or value == 0:
        return ""
    return "green" if value > 0 else "red"


def _signal(row: BoardRow, wide: bool) -> Text:
    if row.action is None:
        return Text("-", style="dim")
    style = {"buy": "bold green", "sell": "bold red"}.get(row.action, "dim")
    kind = "" if wide or row.source_kind is None else " " + row.source_kind[0]
    return Text(f"{row.action} {row.confidence or 0:.2f}{kind}", style=style)
