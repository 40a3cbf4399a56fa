"""MainScreen, the chart: one market's candles (stored history and, when the session watches
it, its live lane), overlays and a sub-pane, buy/sell markers, the prediction panel and the
signal log, fed by engine events.

What it shows is chosen by `show_market(market, unit)` (the Markets screen's Enter, the unit
key): the candles come from the store through the facade's `candles` operation, paged
backwards as the user scrolls, and the markers from its `signals` operation. When the session
watches the market at the session's unit, its lane window is the newest stretch and the
live candles extend it; every lane's events reach this screen, which draws its market's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import pandas as pd
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Header

from engine.params import THRESHOLD_STEP
from tui import messages
from tui.fmt import error_text
from tui.views import SessionView
from tui.widgets import CandleChart, PredictionPanel, SessionBanner, SignalLog, StatusLine
from tui.widgets.candle_chart import ZOOMS
from tui.widgets.chart_overlays import OVERLAYS

CHART_UNITS = ("1", "3", "5", "15", "60", "240", "D")  # what the unit key cycles through
PAGE = 1000  # stored candles per page (scrolling back asks for the next one)
MARKS = 2000  # stored buy (and sell) signals of the market loaded as markers
NARROW = 110  # below this width the prediction panel narrows
SHORT = 32  # below this height the signal log gives its rows to the chart


def unit_label(unit: str) -> str:
    return "1D" if unit == "D" else f"{unit}m"


def unit_width(unit: str) -> timedelta:
    from store.candles import unit_minutes

    return timedelta(minutes=unit_minutes(unit))


class MainScreen(Screen[None]):
    """The chart screen. It renders what its messages carry; the app posts them in the
    order things happen, so the screen never races the engine."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "plus,equals_sign", f"threshold({THRESHOLD_STEP})", "Threshold up", key_display="+"
        ),
        Binding("minus", f"threshold({-THRESHOLD_STEP})", "Threshold down", key_display="-"),
        Binding("t", "next_unit", "Next unit"),
        Binding("v", "sub_pane", "Volume/RSI"),
        Binding("h", "toggle_holds", "Toggle holds"),
        Binding("s", "overlay('sma')", "SMA overlay", show=False),
        Binding("e", "overlay('ema')", "EMA overlay", show=False),
        Binding("b", "overlay('bb')", "Bollinger overlay", show=False),
        Binding("right_square_bracket", "zoom(1)", "Zoom in", key_display="]", show=False),
        Binding("left_square_bracket", "zoom(-1)", "Zoom out", key_display="[", show=False),
        # priority: the signal log (a table) would take the arrows for its cursor
        Binding("left", "scroll(1)", "Back in time", show=False, priority=True),
        Binding("right", "scroll(-1)", "Forward in time", show=False, priority=True),
        Binding("home", "oldest", "Oldest stored candles", show=False, priority=True),
        Binding("end", "newest", "Newest candles", show=False, priority=True),
    ]

    def __init__(self, market: str, unit: str) -> None:
        super().__init__()
        self.market, self.unit = market, unit
        self.view: SessionView | None = None  # the session, in process or on a server
        self.live_banner: str | None = None  # a live session's banner while connected
        self.chosen = False  # the user picked the market (the session's first no longer rules)
        self.more = False  # older stored candles are left before the chart's oldest
        self.window_start: pd.Timestamp | None = (
            None  # the lane window's first candle (stored before)
        )
        self.paging = False  # a page of stored candles is being fetched

    def compose(self) -> ComposeResult:
        yield Header()
        yield SessionBanner(id="banner")
        with Horizontal(id="market"):
            yield CandleChart(id="chart")
            yield PredictionPanel(id="prediction")
        yield SignalLog(id="signals")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SessionBanner).show(
            f"Starting the {self.market} {self.unit}m session:"
            " probing Upbit, loading the champion model…",
            "starting",
        )
        self._title()
        self.query_one(PredictionPanel).border_title = "prediction"
        self.query_one(SignalLog).border_title = "signals"
        self._set_utc(getattr(self.app, "utc", False))
        if getattr(self.app, "facade", None) is not None and self.view is None:
            # the stored candles now: opening the session (the champion's library, a
            # backfill) takes seconds, and the chart is useful before it
            self.query_one(CandleChart).clear(f"loading {self.market} {unit_label(self.unit)}…")
            self.run_worker(self._load(self.market, self.unit), group="chart", exclusive=True)

    def on_resize(self, event: Resize) -> None:
        """Collapse at 80x24: a narrower prediction panel, the signal log's rows to the chart."""
        width, height = event.size
        self.query_one(PredictionPanel).styles.width = 30 if width < NARROW else 44
        self.query_one(SignalLog).display = height >= SHORT

    def _title(self) -> None:
        chart = self.query_one(CandleChart)
        chart.border_title = f"{self.market} · {unit_label(self.unit)}"

    # --- which market ---------------------------------------------------------------------

    @property
    def watched(self) -> bool:
        """The session decides this market at this unit: its live candles are drawn."""
        view = self.view
        return view is not None and view.unit_of(self.market) == self.unit

    def show_market(self, market: str, unit: str) -> None:
        """Draw `market` at `unit`: its stored candles and signals, loaded in a worker; its
        live candles too when the session watches it at that unit."""
        self.chosen = True
        changed = market != self.market
        self.market, self.unit = market, unit
        if not self.is_mounted:
            return  # composed later: on_mount and the session's opening draw it
        self._title()
        if changed:
            self._reset_panel()
            self._filter_log()
        self.query_one(CandleChart).clear(f"loading {market} {unit_label(unit)}…")
        self.run_worker(self._load(market, unit), group="chart", exclusive=True)

    def _filter_log(self) -> None:
        """The signal log shows the shown market's signals (another's it held stay hidden)."""
        market = self.market
        self.query_one(SignalLog).set_filter(lambda row: row.signal.market == market)

    def _reset_panel(self) -> None:
        panel, view = self.query_one(PredictionPanel), self.view
        panel.signal, panel.probs = None, None
        if view is None:
            return
        if self.market in view.markets:
            model = view.model_of(self.market)
            panel.model_ref = model or f"rule: {view.rule}"
            panel.model_note = "" if model else (view.no_model_reason or "")
            panel.threshold = view.threshold_of(self.market)
        else:
            panel.model_ref = "not watched"
            panel.model_note = "the session does not decide on this market: stored candles"

    async def _load(self, market: str, unit: str) -> None:
        """The chart's candles: the lane window (when watched) after a page of stored ones,
        and the market's stored signals as markers."""
        chart = self.query_one(CandleChart)
        chart.loading = True
        try:
            window = await self.view.window(market) if self.watched and self.view else None
            stored: list[dict[str, Any]] = []
            self.window_start = None if window is None or window.empty else window["ts"].iloc[0]
            self.more = False
            if self._uses_store():
                stored, self.more = await self._page(market, unit, end=self.window_start)
            if (market, unit) != (self.market, self.unit):
                return  # another was asked for meanwhile
            rows = stored + (window.to_dict("records") if window is not None else [])
            chart.empty_text = (
                f"no stored {market} {unit_label(unit)} candles"
                " (`upquant data backfill` fetches them)"
                if self.app.facade is not None  # type: ignore[attr-defined]
                else "the store is not available to this session"
            )
            chart.load(rows, live=True, keep_newer=True)
            if self._uses_store():
                await self._load_marks(market, unit)
        except Exception as exc:  # noqa: BLE001 - shown, never raised into the screen
            self.notify(error_text(exc), severity="error")
            self.query_one(StatusLine).show(f"chart: {error_text(exc)}", "error")
        finally:
            chart.loading = False

    def _uses_store(self) -> bool:
        """Stored candles belong on this chart: a demo session's market is synthetic."""
        if self.app.facade is None:  # type: ignore[attr-defined]
            return False
        return not (self.watched and self.view is not None and self.view.mode == "demo")

    async def _page(
        self,
        market: str,
        unit: str,
        *,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of stored candles (the newest PAGE of [start, end)); whether older ones
        are left."""
        from engine.service.stored import CandlesRequest

        request = CandlesRequest.model_validate(
            {"market": market, "unit": unit, "from": start, "to": end, "last": PAGE}
        )
        page = await self.app.call("candles", request)  # type: ignore[attr-defined]
        return [candle.model_dump() for candle in page.candles], bool(page.more)

    async def _load_marks(self, market: str, unit: str) -> None:
        """The market's stored buy and sell signals as markers; the newest stored signal in
        the panel when the session has not decided on this market yet."""
        from engine.service.stored import SignalsRequest
        from engine.trading.strategies import Signal

        chart, panel = self.query_one(CandleChart), self.query_one(PredictionPanel)
        for action in ("buy", "sell"):
            request = SignalsRequest(market=market, unit=unit, action=action, last=MARKS)
            found = await self.app.call("signals", request)  # type: ignore[attr-defined]
            chart.add_marks((s.ts, s.action) for s in found.root)
        if panel.signal is None:
            newest = await self.app.call(  # type: ignore[attr-defined]
                "signals", SignalsRequest(market=market, unit=unit, last=1)
            )
            if newest.root and (market, unit) == (self.market, self.unit):
                s = newest.root[0]
                panel.show_signal(
                    Signal(
                        pd.Timestamp(s.ts),
                        s.market,
                        s.action,
                        s.confidence,
                        s.source,
                        s.reason,
                        s.model_id,
                    ),
                    None,
                )

    # --- the session's messages -----------------------------------------------------------

    def _mine(self, candle_or_market: Any) -> bool:
        """An event of the market and unit shown (the session's first market, at its lane's
        unit, when the event does not say)."""
        view = self.view
        if view is None:
            return False
        if isinstance(candle_or_market, str):
            market, unit = candle_or_market, None
        else:
            market = candle_or_market.get("market") or view.market
            unit = candle_or_market.get("unit")
        return market == self.market and (unit or view.unit_of(market)) == self.unit

    @on(messages.SessionOpened)
    def _session_opened(self, message: messages.SessionOpened) -> None:
        self.view = view = message.view
        self.live_banner = view.banner if view.mode == "live" else None
        self.query_one(SessionBanner).show(
            view.banner, "live" if view.mode == "live" else "warning"
        )
        if not self.chosen:
            self.market, self.unit = view.market, view.unit  # attached: the server's choice
        self._title()
        self._reset_panel()
        self.query_one(StatusLine).show(f"{view.mode}: waiting for the first closed candle")
        self.refresh_bindings()
        if (self.market, self.unit) == (view.market, view.unit):
            chart = self.query_one(CandleChart)
            chart.load(message.history)
            self.window_start = None if message.history.empty else message.history["ts"].iloc[0]
            self.more = False
            if self._uses_store():
                self.run_worker(self._older_and_marks(), group="chart", exclusive=True)
        else:
            self.show_market(self.market, self.unit)

    async def _older_and_marks(self) -> None:
        """After the session's window: a page of stored candles before it, the markers."""
        market, unit = self.market, self.unit
        try:
            older, self.more = await self._page(market, unit, end=self.window_start)
            if (market, unit) != (self.market, self.unit):
                return
            self.query_one(CandleChart).prepend(older)
            await self._load_marks(market, unit)
        except Exception as exc:  # noqa: BLE001 - shown, never raised into the screen
            self.query_one(StatusLine).show(f"chart: {error_text(exc)}", "error")

    @on(messages.ThresholdChanged)
    def _threshold_changed(self, message: messages.ThresholdChanged) -> None:
        view = self.view
        watched = view is not None and self.market in view.markets
        self.query_one(PredictionPanel).threshold = (
            view.threshold_of(self.market) if view is not None and watched else message.threshold
        )

    @on(messages.FormingCandle)
    def _forming_candle(self, message: messages.FormingCandle) -> None:
        if self._mine(message.candle):
            self.query_one(CandleChart).add_candle(message.candle, closed=False)

    @on(messages.CandleClosed)
    def _candle_closed(self, message: messages.CandleClosed) -> None:
        if self._mine(message.candle):
            self.query_one(CandleChart).add_candle(message.candle, closed=True)

    @on(messages.SignalReceived)
    def _signal(self, message: messages.SignalReceived) -> None:
        signal = message.signal
        if self.view is not None and signal.market != self.market:
            return  # another lane's: the Markets and Signals screens show it
        self.query_one(PredictionPanel).show_signal(signal, message.probs)
        self.query_one(SignalLog).add_signal(signal)
        if self._mine(signal.market):
            self.query_one(CandleChart).mark_signal(signal.ts, signal.action)

    @on(messages.FeedStatus)
    def _feed_status(self, message: messages.FeedStatus) -> None:
        self.query_one(StatusLine).show(message.text, message.level)
        if message.connected is not None and self.live_banner is not None:
            # the banner must not say LIVE while the socket is down and reconnecting
            self.query_one(SessionBanner).show(
                self.live_banner
                if message.connected
                else f"DISCONNECTED · {message.text} · {self.live_banner}",
                "live" if message.connected else "warning",
            )

    @on(messages.SessionEnded)
    def _session_ended(self, message: messages.SessionEnded) -> None:
        self.query_one(StatusLine).show(message.text, "info")

    @on(messages.SessionFailed)
    def _session_failed(self, message: messages.SessionFailed) -> None:
        self.query_one(StatusLine).show(message.text, "error")
        # the banner must not keep saying LIVE over a dead feed
        banner = self.query_one(SessionBanner)
        opened = self.view is not None
        banner.show(f"{banner.text} · {message.text}" if opened else message.text, "error")

    @on(messages.ClockChanged)
    def _clock_changed(self, message: messages.ClockChanged) -> None:
        self._set_utc(message.utc)

    def _set_utc(self, utc: bool) -> None:
        chart = self.query_one(CandleChart)
        chart.utc = utc
        chart.refresh()
        self.query_one(PredictionPanel).utc = utc
        self.query_one(SignalLog).utc = utc

    # --- actions --------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "threshold":
            view = self.view
            # shown, but dimmed until the session runs (and on a market it does not watch)
            return (view is not None and self.market in view.markets) or None
        return True

    def action_threshold(self, step: float) -> None:
        view = self.view
        if view is None or self.market not in view.markets:
            return
        value = view.set_threshold(view.threshold_of(self.market) + step, self.market)
        self.query_one(PredictionPanel).threshold = value

    def action_toggle_holds(self) -> None:
        log = self.query_one(SignalLog)
        log.show_holds = not log.show_holds
        self.query_one(StatusLine).show(
            "signal log: " + ("all signals" if log.show_holds else "buy and sell only")
        )

    def action_next_unit(self) -> None:
        at = CHART_UNITS.index(self.unit) if self.unit in CHART_UNITS else -1
        self.show_market(self.market, CHART_UNITS[(at + 1) % len(CHART_UNITS)])

    def action_sub_pane(self) -> None:
        pane = self.query_one(CandleChart).next_sub_pane()
        self.query_one(StatusLine).show(f"sub-pane: {pane}")

    def action_overlay(self, key: str) -> None:
        shown = self.query_one(CandleChart).toggle_overlay(key)
        legend = next(o.legend for o in OVERLAYS if o.key == key)
        self.query_one(StatusLine).show(f"{legend} {'shown' if shown else 'hidden'}")

    def action_zoom(self, step: int) -> None:
        chart = self.query_one(CandleChart)
        chart.set_zoom(chart.zoom + step)
        per, width = ZOOMS[chart.zoom]
        self.query_one(StatusLine).show(
            f"zoom: {per} candles per column" if per > 1 else f"zoom: {width} columns per candle"
        )
        self._maybe_page_back()

    def action_scroll(self, direction: int) -> None:
        chart = self.query_one(CandleChart)
        if direction < 0 and chart.back == 0 and not chart.live:
            self._run_paging(self._page_forward())  # past the newest held: the next page
            return
        chart.scroll_by(direction * max(1, chart.shown // 4))
        self._maybe_page_back()

    def action_oldest(self) -> None:
        if not self._uses_store():
            self.query_one(CandleChart).scroll_to_oldest()
            return
        self._run_paging(self._page_oldest())

    def action_newest(self) -> None:
        chart = self.query_one(CandleChart)
        if chart.live:
            chart.scroll_by(-chart.back)
        else:
            self.show_market(self.market, self.unit)

    # --- paging through stored history ------------------------------------------------------

    def _maybe_page_back(self) -> None:
        if self.query_one(CandleChart).at_oldest and self.more and self._uses_store():
            self._run_paging(self._page_back())

    def _run_paging(self, work: Any) -> None:
        if self.paging:
            work.close()
            return
        self.paging = True
        self.run_worker(work, group="chart-page", exclusive=True)

    async def _paged(self, work: Any) -> None:
        chart = self.query_one(CandleChart)
        status = self.query_one(StatusLine)
        status.show("loading stored candles…")
        try:
            await work
            status.show(f"{len(chart.bars)} candles held · {chart.back} back")
        except Exception as exc:  # noqa: BLE001 - shown, never raised into the screen
            self.notify(error_text(exc), severity="error")
            status.show(f"chart: {error_text(exc)}", "error")
        finally:
            self.paging = False

    async def _page_back(self) -> None:
        async def back() -> None:
            chart = self.query_one(CandleChart)
            market, unit = self.market, self.unit
            first = chart.bars[0].ts if chart.bars else None
            older, more = await self._page(market, unit, end=first)
            if (market, unit) == (self.market, self.unit):
                self.more = more
                chart.prepend(older)

        await self._paged(back())

    async def _page_forward(self) -> None:
        async def forward() -> None:
            chart = self.query_one(CandleChart)
            market, unit = self.market, self.unit
            if not chart.bars:
                return
            start = chart.bars[-1].ts + unit_width(unit)
            end = start + unit_width(unit) * PAGE
            if self.window_start is not None and end >= self.window_start:
                self.show_market(market, unit)  # the lane's window is next: the newest
                return
            newer, _ = await self._page(market, unit, start=start, end=end)
            if (market, unit) != (self.market, self.unit):
                return
            if not newer:
                self.show_market(market, unit)
                return
            chart.extend(newer, live=False)
            chart.scroll_by(-max(1, chart.shown // 4))

        await self._paged(forward())

    async def _page_oldest(self) -> None:
        async def oldest() -> None:
            from engine.service.stored import MarketsRequest

            market, unit = self.market, self.unit
            series = await self.app.call("markets", MarketsRequest())  # type: ignore[attr-defined]
            first = next(
                (s.first for s in series.root if (s.market, s.unit) == (market, unit)), None
            )
            if first is None:
                return
            start = pd.Timestamp(first)
            rows, _ = await self._page(
                market, unit, start=start, end=start + unit_width(unit) * PAGE
            )
            if (market, unit) != (self.market, self.unit):
                return
            chart = self.query_one(CandleChart)
            chart.load(rows, live=False)
            self.more = False
            chart.scroll_to_oldest()

        await self._paged(oldest())
