"""SignalsScreen (key 6): every signal with its reason, and a log of server and feed events.

Signals come from three places, each once (SignalLog drops a signal it holds already): the
stored ones at open (the `signals` operation; again, narrowed, when a market or action
filter is set, so the filtered view reaches further back), the session's as they come
(`app.listen`: messages.SignalReceived) and the Workstation's events (every market a server
session decides; tui/eventlog.py). Newest at the bottom, the table following it unless the
cursor was moved up. Filters: the highlighted row's market (`m`), the action (`a`: buy,
sell, hold), the source (`s`: model or rule) and a search over market and reason (`/`).
`p` pauses: new signals are held, counted in the status bar, and appended in order on
resume. At most MAX_ROWS signals are kept (the oldest go first), and as many held; the
table shows the newest TABLE_ROWS of them that match the filters.

The log pane below shows the feed's and the server's events (tui/eventlog.py) with their
time in KST (UTC on the app's `u` key).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static

from engine.trading.strategies import Signal
from tui import messages
from tui.eventlog import EventDigest, EventLine, follow_events
from tui.fmt import error_text, fmt_time
from tui.screens.base import StationScreen
from tui.widgets.event_log import EventLog
from tui.widgets.signal_log import Key, SignalLog, SignalRow

MAX_ROWS = 5_000  # signals kept (and held while paused)
TABLE_ROWS = 1_000  # the newest of them that match the filters, in the table
STORED = 1_000  # stored signals loaded at open, and per filter
ACTIONS = (None, "buy", "sell", "hold")
SOURCES = (None, "model", "rule")
WIDE = (140, 40)  # from this size on the log pane gets more room


class SignalsScreen(StationScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Search", key_display="/"),
        Binding("m", "market", "Market filter"),
        Binding("a", "action", "Action filter"),
        Binding("s", "source", "Source filter"),
        Binding("p", "pause", "Pause/resume"),
        Binding("c", "clear", "Clear filters"),
        Binding("r", "reload", "Reload stored", show=False),
        Binding("escape", "escape", "Back", show=False),
    ]

    AUTO_FOCUS = "#signals"
    DEFAULT_CSS = """
    SignalsScreen #filters { height: 1; padding: 0 1; background: $boost; }
    SignalsScreen #filters.-paused { background: $warning 30%; }
    SignalsScreen #search { height: 1; border: none; padding: 0 1; display: none; }
    SignalsScreen #search.-shown { display: block; }
    SignalsScreen #signals { height: 1fr; }
    SignalsScreen #detail { height: 2; padding: 0 1; color: $text-muted; }
    SignalsScreen #events { height: 6; border-top: solid $secondary; padding: 0 1; }
    SignalsScreen.-wide #events { height: 14; }
    SignalsScreen.-wide #detail { height: 3; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.market: str | None = None
        self.action: str | None = None
        self.source: str | None = None
        self.query_text = ""
        self.paused = False
        self.held: dict[Key, SignalRow] = {}  # while paused, in the order they came
        self.digest = EventDigest(lambda: self.station.now())  # the app's clock, once mounted
        self._server_mode: str | None = None  # the server session's mode, from its events
        self._search_timer: Timer | None = None
        self._follower: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="filters")
        yield Input(placeholder="search market and reason (Enter: done)", id="search")
        yield SignalLog(wide=True, max_rows=MAX_ROWS, table_rows=TABLE_ROWS, id="signals")
        yield Static(id="detail")
        yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SignalLog).border_title = "signals"
        self.query_one(EventLog).border_title = "server and feed events"
        self.station.listen(self)
        view = self.station.view
        if view is not None:  # opened before this screen listened: said as it is now
            line = self.digest.session(view)
            if line is not None:
                self._log(line)
        self._show_filters()
        if self.station.facade is None:
            return  # the status bar says the store is not available
        self.action_reload()
        # a task, not a worker: it follows the events for the screen's life, and workers are
        # what tests (and the app) wait to complete
        self._follower = asyncio.get_running_loop().create_task(self._follow())

    def on_unmount(self) -> None:
        if self._follower is not None:
            self._follower.cancel()

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width >= WIDE[0] and event.size.height >= WIDE[1], "-wide")

    # --- signals --------------------------------------------------------------------------

    def _add(self, row: SignalRow) -> None:
        if self.paused:
            if not self.query_one(SignalLog).holds(row):
                self.held.setdefault(row.key, row)
                if len(self.held) > MAX_ROWS:  # the oldest held go first, as in the log
                    del self.held[next(iter(self.held))]
            self._show_filters()
            return
        if self.query_one(SignalLog).add_signal(row.signal, unit=row.unit, mode=row.mode):
            self._show_filters()

    @on(messages.SignalReceived)
    def _signal(self, message: messages.SignalReceived) -> None:
        view = self.station.view
        mode = view.mode if view is not None else None
        self._add(SignalRow(message.signal, self._unit_of(message.signal.market), mode))

    def _unit_of(self, market: str) -> str:
        """The unit `market`'s lane decides on (a watchlist's markets each have their own)."""
        view = self.station.view
        session = getattr(view, "session", None)  # in process (or hosted): its engine's lanes
        markets = getattr(session, "markets", None)
        lanes = markets.lanes if markets is not None else {}
        if market in lanes:
            return str(lanes[market].unit)
        status = getattr(view, "status", None)  # a server's session: its watchlist
        if isinstance(status, dict):
            for watched in status.get("markets") or []:
                if watched.get("market") == market and watched.get("unit"):
                    return str(watched["unit"])
        return view.unit if view is not None else self.station.unit

    def action_reload(self) -> None:
        """Load the newest stored signals (of the market and action filtered on)."""
        if self.station.facade is None:
            return
        self._load(self.market, self.action)

    @work(group="stored", exclusive=True)
    async def _load(self, market: str | None, action: str | None) -> None:
        from engine.service.stored import SignalsRequest

        detail = self.query_one("#detail", Static)
        log = self.query_one(SignalLog)
        log.loading = log.row_count == 0
        try:
            stored = await self.station.call(
                "signals",
                SignalsRequest.model_validate({"market": market, "action": action, "last": STORED}),
            )
        except Exception as exc:  # noqa: BLE001 - any failure is shown, the screen stays
            self.notify(f"stored signals: {error_text(exc)}", severity="error")
            return
        finally:
            log.loading = False
        rows = [
            SignalRow(
                Signal(
                    s.ts,
                    s.market,
                    s.action,
                    s.confidence,
                    s.source,
                    s.reason or "",
                    s.model_id,
                    s.strategy,
                ),
                s.unit,
                s.mode,
            )
            for s in reversed(stored.root)
        ]
        added = log.load(rows)
        self._show_filters()
        if not log.row_count:
            detail.update("no signals stored yet: they appear here as the engine decides")
        elif added:
            self._show_detail()

    # --- events ---------------------------------------------------------------------------

    async def _follow(self) -> None:
        try:
            await follow_events(self.station.facade, self._on_frame)
        except Exception as exc:  # noqa: BLE001 - the log says why it stopped; the screen stays
            self._on_frame({"type": "status", "level": "error", "text": error_text(exc)})

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in ("hello", "live"):
            live = frame.get("live") or {}
            self._server_mode = live.get("mode") if live.get("running") else None
        if kind == "signal":
            message = messages.from_wire(frame)
            if isinstance(message, messages.SignalReceived):
                self._add(SignalRow(message.signal, frame.get("unit"), self._server_mode))
            return
        for line in self.digest.frame(frame):
            self._log(line)

    def _log(self, line: EventLine) -> None:
        self.query_one(EventLog).add(line)

    @on(messages.FeedStatus)
    @on(messages.SessionFailed)
    @on(messages.SessionEnded)
    @on(messages.SessionOpened)
    def _session_event(self, message: Any) -> None:
        line = self.digest.message(message)
        if line is not None:
            self._log(line)

    @on(messages.ClockChanged)
    def _clock(self, message: messages.ClockChanged) -> None:
        self.query_one(SignalLog).utc = message.utc
        self.query_one(EventLog).utc = message.utc
        self._show_detail()

    # --- filters --------------------------------------------------------------------------

    def _filter(self) -> None:
        market, action, source = self.market, self.action, self.source
        words = self.query_text.lower().split()

        def matches(row: SignalRow) -> bool:
            s = row.signal
            if market is not None and s.market != market:
                return False
            if action is not None and s.action != action:
                return False
            if source is not None and row.kind != source:
                return False
            text = f"{s.market} {s.reason}".lower()
            return all(word in text for word in words)

        filtered = market or action or source or words
        self.query_one(SignalLog).set_filter(matches if filtered else None)
        self._show_filters()
        self._show_detail()

    def action_market(self) -> None:
        """Only the highlighted row's market; again: every market."""
        if self.market is not None:
            self.market = None
        else:
            row = self._highlighted()
            if row is None:
                self.notify("no signal highlighted: its market is the filter", severity="warning")
                return
            self.market = row.signal.market
        self._filter()
        if self.market is not None:
            self.action_reload()

    def action_action(self) -> None:
        self.action = ACTIONS[(ACTIONS.index(self.action) + 1) % len(ACTIONS)]
        self._filter()
        if self.action is not None:
            self.action_reload()

    def action_source(self) -> None:
        self.source = SOURCES[(SOURCES.index(self.source) + 1) % len(SOURCES)]
        self._filter()

    def action_clear(self) -> None:
        self.market = self.action = self.source = None
        self.query_text = ""
        search = self.query_one("#search", Input)
        search.value = ""
        search.remove_class("-shown")
        self._filter()

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.add_class("-shown")
        search.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        # applied when typing pauses: a rebuild of thousands of rows per key lags the typing
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(0.15, lambda: self._search(event.value))

    def _search(self, text: str) -> None:
        if text.strip() != self.query_text:
            self.query_text = text.strip()
            self._filter()

    @on(Input.Submitted, "#search")
    def _search_done(self, event: Input.Submitted) -> None:
        self._search(event.value)
        self._leave_search()

    def _leave_search(self) -> None:
        search = self.query_one("#search", Input)
        search.set_class(bool(search.value), "-shown")
        self.query_one(SignalLog).focus()

    def action_escape(self) -> None:
        """Esc: leave the search box; else the app's back."""
        if self.query_one("#search", Input).has_focus:
            self._leave_search()
        else:
            self.station.action_go_back()

    # --- pause ----------------------------------------------------------------------------

    def action_pause(self) -> None:
        """Stop appending new signals (held and counted); again: append them, in order."""
        self.paused = not self.paused
        if not self.paused:
            log = self.query_one(SignalLog)
            held, self.held = self.held, {}
            for row in held.values():
                log.add_signal(row.signal, unit=row.unit, mode=row.mode)
        self._show_filters()

    # --- status ---------------------------------------------------------------------------

    def _show_filters(self) -> None:
        log = self.query_one(SignalLog)
        parts = [f"PAUSED, {len(self.held):,} new"] if self.paused else []  # first: seen
        parts.append(f"{log.row_count:,} of {log.kept:,}")
        parts += [
            f"market {self.market or 'all'}",
            f"action {self.action or 'all'}",
            f"source {self.source or 'all'}",
        ]
        if self.query_text:
            parts.append(f"/{self.query_text}")
        if self.station.facade is None:
            parts.append("the store is not available: this session's signals only")
        bar = self.query_one("#filters", Static)
        bar.update(Text(" · ".join(parts)))  # Text: the search is the user's, not markup
        bar.set_class(self.paused, "-paused")

    def _highlighted(self) -> SignalRow | None:
        log = self.query_one(SignalLog)
        return log.row_at(log.cursor_row)

    @on(DataTable.RowHighlighted, "#signals")
    def _row_highlighted(self) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        row = self._highlighted()
        if row is None:
            return
        s = row.signal
        when = fmt_time(s.ts, utc=self.station.utc, fmt="%Y-%m-%d %H:%M")
        where = f"{s.market} {row.unit}m" if row.unit else s.market
        mode = f" {row.mode}" if row.mode else ""
        confidence = "" if s.confidence is None else f" {s.confidence:.2f}"
        self.query_one("#detail", Static).update(
            Text(f"{when} {where}{mode} {s.action}{confidence} by {s.source}: {s.reason}")
        )
