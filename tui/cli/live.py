"""`upquant tui` and `upquant run`: a live (or replayed) session, in the workstation or
headless."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tui.cli.options import UnitOpt, check, connect
from tui.cli.render import CliError, console, err

if TYPE_CHECKING:
    from engine.server.lifecycle import ServerInfo

# the options `tui` and `run` share (the session they open is the same)
OfflineOpt = Annotated[
    bool, typer.Option(help="Do not contact Upbit: replay stored candles (or a demo market).")
]
ReplayCandlesOpt = Annotated[
    int, typer.Option(help="How many of the newest stored candles a replay plays.")
]


def tui(
    market: Annotated[
        str, typer.Option("--market", "-m", help="Market to watch, e.g. KRW-BTC.")
    ] = "KRW-BTC",
    unit: UnitOpt = "1",
    threshold: Annotated[
        float,
        typer.Option(
            help="Confidence threshold for model signals, in [0.34, 0.95] (adjust with +/-)."
        ),
    ] = 0.5,
    offline: OfflineOpt = False,
    replay_delay: Annotated[float, typer.Option(help="Seconds between replayed candles.")] = 0.25,
    replay_candles: ReplayCandlesOpt = 2000,
    port: Annotated[
        int,
        typer.Option(
            help="Port of the server this TUI hosts when none runs (0: any free one;"
            " server.json names it).",
            min=0,
            max=65535,
        ),
    ] = 0,
) -> None:
    """Open the workstation: live Upbit candles, champion predictions, signals. Falls back to replay/demo offline.

    With `upquant serve` running it attaches to the server's session (starting one when none
    runs) and leaves the server running on quit; otherwise it hosts the server itself for as
    long as it runs, so other terminals' commands still reach the store.
    """
    import os

    from engine.params import check_session_args

    unit = check(market, unit)
    check_session_args(
        threshold=threshold, replay_delay=replay_delay, replay_candles=replay_candles
    )
    options: dict[str, Any] = {
        "threshold": threshold,
        "offline": offline,
        "replay_delay": replay_delay,
        "replay_candles": replay_candles,
    }
    if os.environ.get("UPQUANT_SERVER", "").lower() == "off":  # in process, no server
        from tui.app import UpquantApp

        with connect() as con:
            UpquantApp(con, market, unit, **options).run()
        return
    from engine.server.lifecycle import running_server

    info = running_server()  # a stale server.json (its process gone) is removed here
    if info is not None:
        _attach(info, market, unit, options)
    else:
        _host(market, unit, port, options)


def _attach(info: ServerInfo, market: str, unit: str, options: dict[str, Any]) -> None:
    """Be the running server's client: show its session (start one when none runs); the
    server and its session keep running when the TUI quits."""
    from engine.server.lifecycle import read_token, token_path
    from tui.app import UpquantApp
    from tui.remote import attach

    token = read_token()
    if token is None:
        raise CliError(
            f"the upquant server at {info.url} owns the store, but its token file"
            f" {token_path()} is missing or unreadable",
            "run the TUI as the user who started `upquant serve`, or restart the server",
        )
    app = UpquantApp(
        None, market, unit, session_factory=partial(attach, info.url, token, market, unit, **options)
    )
    app.server_note = f"attached to {info.url}"
    app.run()
    err.print(f"left the server running at {info.url} (pid {info.pid})")


def _host(market: str, unit: str, port: int, options: dict[str, Any]) -> None:
    """Own the store and serve it while the TUI runs; the server stops after the session's
    flush when the TUI quits."""
    from engine.server.runner import stop_workstation
    from engine.service import Workstation
    from tui.app import UpquantApp
    from tui.host import hosted_session, run_hosted

    ws = Workstation()
    try:
        ws.con()  # open (and migrate) the store now: it is this process's until the TUI quits
        factory = partial(hosted_session, ws, market, unit, **options)
        app = UpquantApp(None, market, unit, session_factory=factory)
        info = asyncio.run(run_hosted(app, ws, port))
    finally:
        stop_workstation(ws)
    err.print(f"stopped the server this TUI hosted at {info.url} (pid {info.pid})")


def run(
    market: Annotated[
        str, typer.Option("--market", "-m", help="Market, e.g. KRW-BTC.")
    ] = "KRW-BTC",
    unit: UnitOpt = "1",
    threshold: Annotated[
        float, typer.Option(help="Confidence threshold for model signals, in [0.34, 0.95].")
    ] = 0.5,
    offline: OfflineOpt = False,
    replay_delay: Annotated[float, typer.Option(help="Seconds between replayed candles.")] = 0.0,
    replay_candles: ReplayCandlesOpt = 2000,
) -> None:
    """Run the engine headless (live, or replay when Upbit is unreachable) and print each buy/sell signal.

    With `upquant serve` running it follows the server's session instead (starting one when
    none runs) until the session ends or Ctrl-C; the server keeps running.
    """
    from engine.live.engine import SignalEvent, StatusEvent
    from engine.params import check_session_args
    from engine.service.modelops import open_managed_session

    unit = check(market, unit)
    check_session_args(
        threshold=threshold, replay_delay=replay_delay, replay_candles=replay_candles
    )

    def show(event: object) -> None:
        if isinstance(event, StatusEvent):
            err.print(event.text, style="yellow" if event.level != "info" else None)
        elif isinstance(event, SignalEvent):
            show_signal(event.signal)

    async def main(con) -> Counter:
        session = await open_managed_session(
            con,
            market,
            unit,
            threshold=threshold,
            offline=offline,
            replay_delay=replay_delay,
            replay_candles=replay_candles,
        )
        err.print(session.banner)
        session.engine.subscribe(show)
        await session.runner
        return Counter(s.action for s in session.engine.signals)

    import os

    if os.environ.get("UPQUANT_SERVER", "").lower() != "off":
        from engine.server.lifecycle import running_server

        info = running_server()  # a stale server.json (its process gone) is removed here
        if info is not None:  # the server owns the store: follow its session instead
            options = {
                "threshold": threshold,
                "offline": offline,
                "replay_delay": replay_delay,
                "replay_candles": replay_candles,
            }
            counts = asyncio.run(_follow_server(info, market, unit, options, show_signal))
            console.print(
                f"signals seen: {sum(counts.values()):,} (buy {counts['buy']}, sell"
                f" {counts['sell']}, hold {counts['hold']}); the server at {info.url} keeps"
                " running"
            )
            return
    with connect() as con:
        counts = asyncio.run(main(con))
    console.print(
        f"signals: {sum(counts.values()):,} (buy {counts['buy']}, sell {counts['sell']}, hold {counts['hold']})"
    )


def show_signal(s: Any) -> None:
    """One line per buy or sell signal, as `upquant run` prints them (holds are counted only)."""
    if s.action != "hold":
        console.print(
            f"{s.ts:%Y-%m-%d %H:%M} {s.market} {s.action.upper():4} {s.confidence:.2f}"
            f" {s.source}: {s.reason}"
        )


async def _follow_server(
    info: ServerInfo,
    market: str,
    unit: str,
    options: dict[str, Any],
    show: Callable[[Any], None],
) -> Counter:
    """`upquant run` while a server owns the store: its session (started with these options
    when none runs) followed over the events stream until the session ends (a replay played
    out, or stopped) or Ctrl-C; the server keeps running either way."""
    from engine.server.lifecycle import read_token, token_path
    from tui import messages
    from tui.remote import attach

    token = read_token()
    if token is None:
        raise CliError(
            f"the upquant server at {info.url} owns the store, but its token file"
            f" {token_path()} is missing or unreadable",
            "run as the user who started `upquant serve`, or restart the server",
        )
    session = await attach(info.url, token, market, unit, **options)
    err.print(f"attached to {info.url}: {session.banner}")
    if session.note:
        err.print(session.note, style="yellow")
    counts: Counter = Counter()
    follow = asyncio.ensure_future(session.follow(lambda m: post(m)))

    def post(message: object) -> None:
        if isinstance(message, messages.SignalReceived):
            counts[message.signal.action] += 1
            show(message.signal)
        elif isinstance(message, messages.FeedStatus):
            err.print(message.text, style="yellow" if message.level != "info" else None)
        elif isinstance(message, messages.SessionEnded):
            err.print(message.text)
            follow.cancel()

    with contextlib.suppress(asyncio.CancelledError):
        await follow
    return counts
