"""UpquantApp: the composition root of the trading workstation.

It opens the engine session in a worker, forwards engine events to the main screen as
messages, and drives the session's feed; everything it shows comes from the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import ClassVar

import duckdb
from textual.app import App
from textual.binding import Binding, BindingType

from engine.live.session import REPLAY_CANDLES, Session, open_session
from tui import messages
from tui.screens import HelpScreen, MainScreen, binding_rows

SessionFactory = Callable[[], Awaitable[Session]]


class UpquantApp(App[None]):
    TITLE = "upquant"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        market: str = "KRW-BTC",
        unit: str = "1",
        *,
        threshold: float = 0.5,
        offline: bool = False,
        replay_delay: float = 0.25,
        replay_candles: int = REPLAY_CANDLES,
        session_factory: SessionFactory | None = None,
    ) -> None:
        super().__init__()
        self.market, self.unit = market, unit
        self.session_factory: SessionFactory = session_factory or partial(
            open_session,
            con,
            market,
            unit,
            threshold=threshold,
            offline=offline,
            replay_delay=replay_delay,
            replay_candles=replay_candles,
        )
        self.session: Session | None = None
        self.sub_title = f"{market} {unit}m"

    def get_default_screen(self) -> MainScreen:
        return MainScreen(self.market, self.unit)

    @property
    def main_screen(self) -> MainScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    def on_mount(self) -> None:
        self.run_worker(self._run_session(), name="session", group="session", exclusive=True)

    async def _run_session(self) -> None:
        """Open the session, then drive its feed until the replay ends (or forever, live)."""
        main = self.main_screen
        try:
            session = await self.session_factory()
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the user can quit
            main.post_message(
                messages.SessionFailed(f"could not start the session: {type(exc).__name__}: {exc}")
            )
            return
        self.session = session
        self.sub_title = f"{self.market} {self.unit}m · {session.mode}"
        engine = session.engine
        # the snapshot of the window and the subscription happen before the feed starts,
        # so the screen sees every candle exactly once
        main.post_message(messages.SessionOpened(session, engine.history.copy()))
        engine.subscribe(lambda event: main.post_message(messages.from_engine(event)))
        try:
            result = await session.runner
        except Exception as exc:  # noqa: BLE001 - the screen stays up to show why
            main.post_message(
                messages.SessionFailed(f"engine stopped: {type(exc).__name__}: {exc}")
            )
            return
        finally:
            self._flush(session)
        if session.mode != "live":
            source = " (demo market)" if session.mode == "demo" else ""
            main.post_message(messages.SessionEnded(f"replay finished: {result} candles{source}"))

    def _flush(self, session: Session) -> None:
        """Store closed candles still buffered when the feed ends or the app quits."""
        try:
            session.engine.flush()
        except Exception as exc:  # noqa: BLE001 - shown, not raised, during shutdown
            self.main_screen.post_message(
                messages.SessionFailed(
                    f"could not store the last candles: {type(exc).__name__}: {exc}"
                )
            )

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(binding_rows(self.screen)))
