"""UpquantApp: the composition root of the trading workstation.

It opens the session in a worker and follows it through its view (tui/views.py): a session
it opened in process (it drives the feed), one the server it hosts runs, or one a running
server runs (tui/remote.py); the view posts what happens to the chart screen (and to every
screen that `listen`s) as messages.

Screens (tui/screens/registry.py) are Textual modes, one per number key; `Esc` goes back to
the screen shown before. Everything a screen asks of the store goes through the Workstation
facade (`facade`: the in-process `Workstation`, or `HttpWorkstation` when a server owns the
store) with `await app.call(name, request)`, which runs the operation off the event loop.
Times are KST unless the user switched to UTC (`app.utc`, the `u` key); `app.now()` is the
clock screens compute ages with (frozen in snapshot tests).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.worker import WorkerFailed

from engine.service.core import ServiceError
from tui import messages
from tui.client import RemoteError
from tui.fmt import error_text
from tui.screens import HelpScreen, MainScreen
from tui.screens.help import LEGEND, help_sections, textual_actions
from tui.screens.registry import BY_NAME, CHART, ENTRIES, screen_class
from tui.views import LocalView, SessionView

if TYPE_CHECKING:
    from engine.live.session import Session

PROBE_ENV = "UPQUANT_TUI_READY"  # a file: "EPOCH ready ..." and "EPOCH shown MODE" lines
PROBE_S = 0.01  # how often the probe looks for the first useful screen
WARM_AFTER_S = 0.5  # the screens not shown yet are built this long after the first is useful
WARM_LATEST_S = 5.0  # ... or this long after the start, whichever comes first
WARM_EVERY_S = 0.3  # ... one at a time, this far apart
SETTLE_EVERY_S = 30.0  # the heap is settled this often (young objects collected, then frozen)
SETTLE_QUIET_S = 2.0  # ... when no key or click came this long
FULL_EVERY_S = 600.0  # a full collection (frozen objects too), when quiet this long
FULL_QUIET_S = 5.0
FULL_AFTER = 1000  # middle-generation collections before Python's own full one (default 10)

# a session opened in process (the TUI drives its feed), or any other view of one
SessionFactory = Callable[[], Awaitable["Session | SessionView"]]


class UpquantApp(App[None]):
    TITLE = "upquant"
    DEFAULT_MODE = CHART
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        *(
            Binding(entry.key, f"show('{entry.name}')", entry.title, show=False)
            for entry in ENTRIES
        ),
        Binding("escape", "go_back", "Back", show=False),
        Binding("u", "toggle_utc", "KST/UTC", show=False),
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
        replay_candles: int | None = None,
        session_factory: SessionFactory | None = None,
        facade: Any = None,
        clock: Callable[[], datetime] | None = None,
        start: str = CHART,
        warm: bool = False,
    ) -> None:
        super().__init__()
        if start not in BY_NAME:
            raise ValueError(f"no screen {start!r}: one of {', '.join(BY_NAME)}")
        self.market, self.unit = market, unit
        if session_factory is None:
            if con is None:
                raise ValueError("UpquantApp needs the store's connection or a session factory")
            from engine.live.session import REPLAY_CANDLES
            from engine.service.modelops import open_managed_session

            session_factory = partial(
                open_managed_session,
                con,
                market,
                unit,
                threshold=threshold,
                offline=offline,
                replay_delay=replay_delay,
                replay_candles=REPLAY_CANDLES if replay_candles is None else replay_candles,
            )
        self.session_factory: SessionFactory = session_factory
        self.session: Session | None = None  # the in-process session the TUI opened
        self.view: SessionView | None = None  # what the screen draws
        self.server_note = ""  # e.g. "serving http://127.0.0.1:PORT" while it hosts the server
        self.sub_title = f"{market} {unit}m"
        # the Workstation facade (in process or HttpWorkstation); None: only the session
        self.facade = facade
        self._clock = clock
        self.utc = False  # times in KST unless the user switched (the `u` key)
        self.start = start
        self.warm = warm  # build the other screens in the background after the start
        self.chart_screen = MainScreen(market, unit)
        self._listeners: list[Screen[Any]] = []  # screens the session's messages also go to
        self._shown: list[str] = []  # the screens shown before, for Esc
        # the benchmark's probe: a file the app appends to when it is ready, and on switches
        self._probe = os.environ.get(PROBE_ENV) or None
        self._input_at = time.monotonic()  # the last key or click (the heap is settled when quiet)
        self._full_at = time.monotonic()  # the last full collection
        self._built: asyncio.Event | None = None  # set once every screen is built (warm)
        for entry in ENTRIES:
            if entry.name == CHART:
                self.add_mode(CHART, lambda: self.chart_screen)  # the session's, made here
            else:
                self.add_mode(entry.name, partial(_make_screen, entry.name))

    def get_default_screen(self) -> MainScreen:
        return self.chart_screen

    def now(self) -> datetime:
        """The time screens compute ages and ranges from (frozen in snapshot tests)."""
        return self._clock() if self._clock is not None else datetime.now(UTC)

    async def call(self, name: str, request: Any) -> Any:
        """Run facade operation `name` with `request` off the event loop; its response.
        Raises what the operation raises (ServiceError, RemoteError: their message and hint
        are what a screen shows), or NoFacade when the app has no facade."""
        if self.facade is None:
            raise NoFacade(
                f"{name} needs the store, and this TUI runs a session without it",
                "start the TUI with `upquant tui` (it hosts or attaches to the server)",
            )
        method = getattr(self.facade, name)
        return await asyncio.to_thread(method, request)

    def listen(self, screen: Screen[Any]) -> None:
        """Deliver the session's messages to `screen` too (the chart gets them always)."""
        if screen not in self._listeners:
            self._listeners.append(screen)

    def deliver(self, message: Message) -> None:
        """Post one session message to the chart screen (unless it is about another market
        than the one it draws: with 200 live markets those are most, and each costs the
        screen a dispatch) and to every listening screen."""
        if not self._elsewhere(message):
            self.chart_screen.post_message(message)
        for screen in self._listeners:
            screen.post_message(copy.copy(message))

    def _elsewhere(self, message: Message) -> bool:
        """A candle or signal of a market other than the chart's, once its session runs."""
        chart = self.chart_screen
        if chart.view is None:
            return False  # the chart's market may still become the session's
        if isinstance(message, messages.FormingCandle | messages.CandleClosed):
            market = message.candle.get("market")
        elif isinstance(message, messages.SignalReceived):
            market = message.signal.market
        else:
            return False
        return market is not None and market != chart.market

    def on_mount(self) -> None:
        self.run_worker(self._run_session(), name="session", group="session", exclusive=True)
        if self.start != CHART:
            self.call_after_refresh(self.action_show, self.start)
        self._ready_timer = self.set_interval(PROBE_S, self._check_ready)
        if self.warm:
            self.set_timer(WARM_LATEST_S, self._warm_start)

    def _warm_start(self) -> None:
        if self._built is not None:
            return  # started already
        self._built = asyncio.Event()  # every screen built
        self.run_worker(self._warm_kernels(), name="warm kernels", group="warm")
        self.run_worker(self._warm_screens(), name="warm screens", group="warm")

    async def _warm_screens(self) -> None:
        """Build each screen not shown yet, one per WARM_EVERY_S while the user looks at the
        first, so that showing it later is a switch (~20-40 ms) and not a build (its widgets,
        its CSS, its first query: 0.3-1 s under load). Built screens are suspended at once, as
        a switch away from them would (they poll only while shown), then laid out and drawn
        off screen at the terminal's size: a first showing would do that (50-100 ms)."""
        from textual import events

        assert self._built is not None
        for entry in ENTRIES:
            if entry.name in self._screen_stacks:
                screen = self._screen_stacks[entry.name][0]
                if screen is not self.chart_screen or self._shown or self.current_mode == CHART:
                    continue  # shown already (or the start)
                # the chart, made with the app, not shown yet (another start): drawn below
            else:
                await asyncio.sleep(WARM_EVERY_S)
                if entry.name in self._screen_stacks:
                    continue  # the user showed it meanwhile
                # Textual has no public "build a mode's screen without showing it"
                mounted = self._init_mode(entry.name)
                screen = self._screen_stacks[entry.name][0]
                screen.post_message(events.ScreenSuspend())
                # its widgets take the stylesheet as they mount; without this, showing it the
                # first time would re-parse and re-apply the app's whole CSS (~50 ms)
                screen._css_update_count = self._css_update_count
                await mounted
            await asyncio.sleep(WARM_EVERY_S)  # its first queries answered (most)
            if screen is not self.screen and screen.is_attached:
                try:  # Textual's private layout calls (pinned <9): a speed-up, not a need
                    screen._refresh_layout(self.size)  # laid out; not displayed: not current
                    screen._compositor.render_update(full=True)  # each widget's lines drawn
                except Exception:  # noqa: BLE001 - shown later as a first showing draws it
                    self.log.warning(f"could not lay out {entry.name} off screen")
        self._built.set()

    async def _warm_kernels(self) -> None:
        """Load the chart's indicator kernels (numba's cached machine code: ~0.3 s the first
        time) off the event loop while the screens are built, then settle the heap: what the
        start built is kept for the session, and a full collection walking it later would
        pause keys for 100-200 ms."""
        from tui.widgets.chart_overlays import warm

        await asyncio.to_thread(warm)
        assert self._built is not None
        await self._built.wait()
        settle_heap()
        # a full collection by itself only after FULL_AFTER young collections (~1 min of a
        # 200-market stream at 60x the live rate), not every ~0.5 s: the settles below do it
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_AFTER)
        self.set_interval(SETTLE_EVERY_S, self._settle)
        self._probe_line("warmed")

    def _settle(self) -> None:
        """Every SETTLE_EVERY_S, when the user is not typing: collect what is garbage among
        the objects made since the last settle (a short pause: only those are walked) and
        freeze the rest; every FULL_EVERY_S, when quiet longer, a full collection (frozen
        objects too: a reference cycle among them that became garbage is freed there)."""
        now = time.monotonic()
        quiet = now - self._input_at
        if quiet >= FULL_QUIET_S and now - self._full_at >= FULL_EVERY_S:
            self._full_at = now
            gc.unfreeze()
            settle_heap()
        elif quiet >= SETTLE_QUIET_S:
            settle_heap()

    async def on_event(self, event: Any) -> None:
        from textual import events

        if isinstance(event, events.Key | events.MouseDown):
            self._input_at = time.monotonic()
        await super().on_event(event)

    # --- the benchmark's probe (scripts/bench_tui.py) ----------------------------------------

    def _probe_line(self, text: str) -> None:
        """Append `EPOCH TEXT` to the UPQUANT_TUI_READY file (the benchmark reads it)."""
        if self._probe is not None:
            with open(self._probe, "a") as out:
                out.write(f"{time.time():.6f} {text}\n")

    def _check_ready(self) -> None:
        """Once the first useful screen is drawn (the chart with candles, a table with rows),
        say so in the probe file, and build the other screens soon after (warm): not before,
        the first screen's work comes first."""
        if self.current_mode != self.start:
            return  # the screen it starts with is not shown yet
        what = useful(self.screen)
        if what is not None:
            self._ready_timer.stop()
            self.call_after_refresh(self._probe_line, f"ready {self.current_mode} {what}")
            if self.warm:
                self.set_timer(WARM_AFTER_S, self._warm_start)

    # --- screens --------------------------------------------------------------------------

    def action_show(self, name: str) -> None:
        """Show screen `name` (a number key, the palette)."""
        if name not in BY_NAME:
            self.notify(f"no screen {name!r}", severity="error")
            return
        if name == self.current_mode:
            return
        self._shown.append(self.current_mode)
        self._switch(name)

    def _switch(self, name: str) -> None:
        self.switch_mode(name)
        if self._probe is not None:  # once the screen shown is drawn
            self.screen.call_after_refresh(self._probe_line, f"shown {name}")

    def open_chart(self, market: str, unit: str | None = None) -> None:
        """Show the chart of `market` (at `unit`, or the chart's unit)."""
        self.chart_screen.show_market(market, unit or self.chart_screen.unit)
        self.action_show(CHART)

    def action_go_back(self) -> None:
        """Esc: close a screen pushed over this one, or go back to the screen shown before."""
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self._shown:
            self._switch(self._shown.pop())

    def action_toggle_utc(self) -> None:
        """`u`: times in UTC or KST; every screen made so far (each mode's, the screens pushed
        over them, the chart) gets ClockChanged and re-renders its times."""
        self.utc = not self.utc
        zone = "UTC" if self.utc else "KST"
        for screen in self._every_screen():
            screen.post_message(messages.ClockChanged(self.utc))
        self.notify(f"times in {zone}")

    def _every_screen(self) -> list[Screen[Any]]:
        """The chart and every screen in every mode's stack, each once."""
        screens: list[Screen[Any]] = [self.chart_screen]
        for stack in self._screen_stacks.values():
            screens.extend(screen for screen in stack if screen not in screens)
        return screens

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette: every screen, every action the shown screen binds, then Textual's."""
        for entry in ENTRIES:
            yield SystemCommand(
                f"{entry.key} {entry.title}", entry.help, partial(self.action_show, entry.name)
            )
        for keys, description, run in screen_actions(screen):
            yield SystemCommand(description, f"key {keys}", run)
        yield from super().get_system_commands(screen)

    async def _run_session(self) -> None:
        """Open the session, then follow it until its feed ends (or forever, live)."""
        try:
            opened = await self.session_factory()
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the user can quit
            self.deliver(
                messages.SessionFailed(f"could not start the session: {type(exc).__name__}: {exc}")
            )
            return
        from engine.live.session import Session

        if isinstance(opened, Session):
            self.session, self.view = opened, LocalView(opened)
        else:
            self.view = opened
        self.sub_title = " · ".join(
            part
            for part in (f"{self.market} {self.unit}m", self.view.mode, self.server_note)
            if part
        )
        try:
            await self.view.follow(self.deliver)
        except Exception as exc:  # noqa: BLE001 - the screen stays up to show why
            self.deliver(messages.SessionFailed(f"engine stopped: {type(exc).__name__}: {exc}"))

    def action_help(self) -> None:
        """`?`: the keys of the shown screen, the screens' and the keys that work everywhere."""
        screen = self.screen
        if isinstance(screen, HelpScreen):
            return
        entry = BY_NAME.get(self.current_mode)
        title = entry.title if entry is not None and screen is self._mode_root() else None
        legend = LEGEND if screen is self.chart_screen else ""
        sections = help_sections(screen, title or type(screen).__name__.removesuffix("Screen"))
        self.push_screen(HelpScreen(sections, f"keys · {title or 'this screen'}", legend))

    def _mode_root(self) -> Screen[Any] | None:
        stack = self._screen_stacks.get(self.current_mode)
        return stack[0] if stack else None

    def _handle_exception(self, error: Exception) -> None:
        """A worker that let a failed operation escape (ServiceError, RemoteError, NoFacade:
        a failure the user can act on, with its hint) is a notification, not the app's end;
        anything else is a bug, and Textual's (it exits with the traceback)."""
        cause = error.error if isinstance(error, WorkerFailed) else error
        if isinstance(cause, USER_ERRORS):
            self.notify(error_text(cause), title="failed", severity="error")
            return
        super()._handle_exception(error)


class NoFacade(Exception):
    """A screen asked the store of an app that runs a session without one."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def settle_heap() -> None:
    """Collect what is garbage now and move what survives out of the cyclic GC's reach
    (`gc.freeze`, as engine/live/predictor.py does after a model load): a full collection of
    the TUI's heap (its modules, every screen's widgets, the tables' rows) takes 100-200 ms,
    and a key pressed then waits for it. Frozen objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()


def useful(screen: Screen[Any]) -> str | None:
    """What makes `screen` useful once drawn: a chart with candles, a table with rows."""
    from textual.widgets import DataTable

    from tui.widgets import CandleChart
    from tui.widgets.board_table import BoardTable

    for chart in screen.query(CandleChart):
        if chart.bars:
            return f"{len(chart.bars)} candles"
    for table in [*screen.query(DataTable), *screen.query(BoardTable)]:
        if table.row_count:
            return f"{table.row_count} rows"
    return None


# failures of an operation that the user can act on (a message and a hint), never a crash
USER_ERRORS = (ServiceError, RemoteError, NoFacade)


def _make_screen(name: str) -> Screen[Any]:
    return screen_class(name)()


def screen_actions(screen: Screen[Any]) -> list[tuple[str, str, Callable[[], Any]]]:
    """(keys, description, run) of each action the screen and its widgets bind (not the
    app's: the palette lists those as screens), for the command palette."""
    app = screen.app
    seen: set[str] = set()
    rows: list[tuple[str, str, Callable[[], Any]]] = []
    for active in screen.active_bindings.values():
        binding = active.binding
        if (
            active.node is app
            or not binding.description
            or binding.action in seen
            or binding.action in textual_actions(type(active.node))
        ):
            continue  # the app's (listed as screens) and Textual's own (cursor, focus, copy)
        seen.add(binding.action)
        node = active.node
        rows.append(
            (
                app.get_key_display(binding),
                binding.description,
                partial(app.run_action, binding.action, node),
            )
        )
    return rows
