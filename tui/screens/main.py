"""MainScreen: chart, prediction panel and signal log of one market, fed by engine events."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header

from engine.live.engine import THRESHOLD_STEP
from tui import messages
from tui.views import SessionView
from tui.widgets import CandleChart, PredictionPanel, SessionBanner, SignalLog, StatusLine


class MainScreen(Screen[None]):
    """The trading screen. It renders what its messages carry; the app posts them in the
    order things happen, so the screen never races the engine."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "plus,equals_sign", f"threshold({THRESHOLD_STEP})", "Threshold up", key_display="+"
        ),
        Binding("minus", f"threshold({-THRESHOLD_STEP})", "Threshold down", key_display="-"),
        Binding("h", "toggle_holds", "Toggle holds"),
    ]

    def __init__(self, market: str, unit: str) -> None:
        super().__init__()
        self.market, self.unit = market, unit
        self.view: SessionView | None = None  # the session, in process or on a server
        self.live_banner: str | None = None  # a live session's banner while connected

    def compose(self) -> ComposeResult:
        yield Header()
        yield SessionBanner(id="banner")
        with Horizontal(id="market"):
            yield CandleChart(id="chart")
            yield PredictionPanel(id="prediction")
        yield SignalLog(id="signals")
        yield StatusLine(id="status")
        yield Footer()

    def show_market(self, market: str, unit: str) -> None:
        """Draw `market` at `unit` (the Markets screen's Enter). Placeholder: the chart
        helper makes it load the market's stored candles and follow its live lane."""
        self.query_one(CandleChart).border_title = f"{market} · {unit}m"

    def on_mount(self) -> None:
        self.query_one(SessionBanner).show(
            f"Starting the {self.market} {self.unit}m session:"
            " probing Upbit, loading the champion model…",
            "starting",
        )
        chart = self.query_one(CandleChart)
        chart.border_title = f"{self.market} · {self.unit}m"
        self.query_one(PredictionPanel).border_title = "prediction"
        self.query_one(SignalLog).border_title = "signals"

    @on(messages.SessionOpened)
    def _session_opened(self, message: messages.SessionOpened) -> None:
        self.view = view = message.view
        self.live_banner = view.banner if view.mode == "live" else None
        self.query_one(SessionBanner).show(
            view.banner, "live" if view.mode == "live" else "warning"
        )
        chart = self.query_one(CandleChart)
        chart.border_title = f"{view.market} · {view.unit}m"  # attached: the server's choice
        chart.load(message.history)
        panel = self.query_one(PredictionPanel)
        if view.model_ref is not None:
            panel.model_ref, panel.model_note = view.model_ref, ""
        else:
            panel.model_ref, panel.model_note = f"rule: {view.rule}", view.no_model_reason or ""
        panel.threshold = view.threshold
        self.query_one(StatusLine).show(f"{view.mode}: waiting for the first closed candle")
        self.refresh_bindings()

    @on(messages.ThresholdChanged)
    def _threshold_changed(self, message: messages.ThresholdChanged) -> None:
        self.query_one(PredictionPanel).threshold = message.threshold

    @on(messages.FormingCandle)
    def _forming_candle(self, message: messages.FormingCandle) -> None:
        self.query_one(CandleChart).add_candle(message.candle, closed=False)

    @on(messages.CandleClosed)
    def _candle_closed(self, message: messages.CandleClosed) -> None:
        self.query_one(CandleChart).add_candle(message.candle, closed=True)

    @on(messages.SignalReceived)
    def _signal(self, message: messages.SignalReceived) -> None:
        signal = message.signal
        self.query_one(PredictionPanel).show_signal(signal, message.probs)
        self.query_one(SignalLog).add_signal(signal)
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

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "threshold":
            return self.view is not None or None  # shown, but dimmed until the session runs
        return True

    def action_threshold(self, step: float) -> None:
        if self.view is None:
            return
        value = self.view.set_threshold(self.view.threshold + step)
        self.query_one(PredictionPanel).threshold = value

    def action_toggle_holds(self) -> None:
        log = self.query_one(SignalLog)
        log.show_holds = not log.show_holds
        self.query_one(StatusLine).show(
            "signal log: " + ("all signals" if log.show_holds else "buy and sell only")
        )
