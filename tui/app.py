"""UpquantApp: the composition root of the trading workstation.

It opens the session in a worker and follows it through its view (tui/views.py): a session
it opened in process (it drives the feed), one the server it hosts runs, or one a running
server runs (tui/remote.py); the view posts what happens to the main screen as messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import ClassVar

import duckdb
from textual.app import App
from textual.binding import Binding, BindingType

from engine.live.session import REPLAY_CANDLES, Session
from engine.service.modelops import open_managed_session
from tui import messages
from tui.screens import HelpScreen, MainScreen, binding_rows
from tui.views import LocalView, SessionView

# a session opened in process (the TUI drives its feed), or any other view of one
SessionFactory = Callable[[], Awaitable[Session | SessionView]]


class UpquantApp(App[None]):
    TITLE = "upquant"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | None,
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
        if session_factory is None:
            if con is None:
                raise ValueError("UpquantApp needs the store's connection or a session factory")
            session_factory = partial(
                open_managed_session,
                con,
                market,
                unit,
                threshold=threshold,
                offline=offline,
                replay_delay=replay_delay,
                replay_candles=replay_candles,
            )
        self.session_factory: SessionFactory = session_factory
        self.session: Session | None = None  # the in-process session the TUI opened
        self.view: SessionView | None = None  # what the screen draws
        self.server_note = ""  # e.g. "serving http://127.0.0.1:PORT" while it hosts the server
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
        """Open the session, then follow it until its feed ends (or forever, live)."""
        main = self.main_screen
        try:
            opened = await self.session_factory()
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the user can quit
            main.post_message(
                messages.SessionFailed(f"could not start the session: {type(exc).__name__}: {exc}")
            )
            return
        if isinstance(opened, Session):
            self.session, self.view = opened, LocalView(opened)
        else:
            self.view = opened
        self.sub_title = " · ".join(
            part for part in (f"{self.market} {self.unit}m", self.view.mode, self.server_note) if part
        )
        try:
            await self.view.follow(main.post_message)
        except Exception as exc:  # noqa: BLE001 - the screen stays up to show why
            main.post_message(
                messages.SessionFailed(f"engine stopped: {type(exc).__name__}: {exc}")
            )

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(binding_rows(self.screen)))
