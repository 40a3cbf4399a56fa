"""`upquant tui` and `upquant run`: a live (or replayed) session, in the workstation or
headless."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
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
        str | None,
        typer.Option(
            "--market",
            "-m",
            help="Market to chart, e.g. KRW-BTC (default: the watchlist's first, else KRW-BTC).",
        ),
    ] = None,
    markets: Annotated[
        str | None,
        typer.Option(
            "--markets",
            help="A watchlist, comma-separated (KRW-BTC,KRW-ETH,...): the session decides"
            " every market and the TUI opens on the Markets screen.",
        ),
    ] = None,
    all_krw: Annotated[
        bool,
        typer.Option(
            "--all-krw",
            help="Watch every KRW market Upbit lists (offline: every stored series of the"
            " unit); opens on the Markets screen.",
        ),
    ] = False,
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

    watchlist = _watchlist(market or "KRW-BTC", markets)
    market = market or watchlist[0].partition(":")[0]  # the chart's: the watchlist's first
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
    watch = Watch(watchlist if markets is not None else [], all_krw)
    if os.environ.get("UPQUANT_SERVER", "").lower() == "off":  # in process, no server
        from engine.server.runner import stop_workstation
        from engine.service import Workstation
        from tui.app import UpquantApp

        ws = Workstation()
        try:
            factory = (
                None if not watch else partial(_watch_session, ws, market, unit, watch, options)
            )
            UpquantApp(
                ws.con(),
                market,
                unit,
                facade=ws,
                session_factory=factory,
                start=watch.start,
                warm=True,
                **options,
            ).run()
        finally:
            stop_workstation(ws)
        return
    from engine.server.lifecycle import running_server

    info = running_server()  # a stale server.json (its process gone) is removed here
    if info is not None:
        _attach(info, market, unit, {**options, "watch": watch.fields()}, watch.start)
    else:
        _host(market, unit, port, {**options, **watch.fields()}, watch.start)


@dataclass(frozen=True)
class Watch:
    """`upquant tui`'s watchlist: --markets (empty: none) and --all-krw."""

    markets: list[str]
    all_krw: bool

    def __bool__(self) -> bool:
        return bool(self.markets) or self.all_krw

    @property
    def start(self) -> str:
        """The screen the TUI opens on: the markets with a watchlist, else the chart."""
        return "markets" if self else "chart"

    def fields(self) -> dict[str, Any]:
        """The live_start fields it sets (none without a watchlist)."""
        return {"markets": self.markets, "all_krw": self.all_krw} if self else {}


async def _watch_session(
    ws: Any, market: str, unit: str, watch: Watch, options: dict[str, Any]
) -> Any:
    """A watchlist session in this process (UPQUANT_SERVER=off): `market` first, then the
    watchlist (entries MARKET or MARKET:UNIT; every KRW market with --all-krw)."""
    from engine.service.live import LiveOps
    from engine.service.modelops import open_managed_session
    from engine.upbit.markets import split_watch

    names, units = split_watch([market, *watch.markets], unit)
    if watch.all_krw:
        names = await LiveOps.watchlist_of(ws.con(), names, unit, offline=options["offline"])
    # open_session takes one market or a watchlist (open_managed_session's hint says str)
    watched: Any = names if len(names) > 1 else names[0]
    return await open_managed_session(ws.con(), watched, unit, units=units, **options)


def _attach(
    info: ServerInfo, market: str, unit: str, options: dict[str, Any], start: str = "chart"
) -> None:
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
    from tui.client import HttpWorkstation

    with HttpWorkstation(info.url, token) as facade:
        app = UpquantApp(
            None,
            market,
            unit,
            session_factory=partial(attach, info.url, token, market, unit, **options),
            facade=facade,
            start=start,
            warm=True,
        )
        app.server_note = f"attached to {info.url}"
        app.run()
    err.print(f"left the server running at {info.url} (pid {info.pid})")


def _host(market: str, unit: str, port: int, options: dict[str, Any], start: str = "chart") -> None:
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
        app = UpquantApp(
            None, market, unit, session_factory=factory, facade=ws, start=start, warm=True
        )
        info = asyncio.run(run_hosted(app, ws, port))
    finally:
        stop_workstation(ws)
    err.print(f"stopped the server this TUI hosted at {info.url} (pid {info.pid})")


def run(
    market: Annotated[
        str, typer.Option("--market", "-m", help="Market, e.g. KRW-BTC.")
    ] = "KRW-BTC",
    markets: Annotated[
        str | None,
        typer.Option(
            "--markets",
            help="A watchlist, comma-separated (KRW-BTC,KRW-ETH,...): every market decided in"
            " one pass per closed candle; MARKET:UNIT (KRW-ETH:60) watches one at its own unit.",
        ),
    ] = None,
    all_krw: Annotated[
        bool,
        typer.Option(
            "--all-krw",
            help="Watch every KRW market Upbit lists (offline: every stored series of the unit).",
        ),
    ] = False,
    unit: UnitOpt = "1",
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Confidence threshold for model signals, in [0.34, 0.95] (default: the"
            " strategy spec's, else 0.5)."
        ),
    ] = None,
    strategy_spec: Annotated[
        str | None,
        typer.Option(
            "--strategy-spec",
            help="A strategy spec file (.json/.toml): voting, regime switch, AI filter, rules.",
        ),
    ] = None,
    offline: OfflineOpt = False,
    replay_delay: Annotated[float, typer.Option(help="Seconds between replayed candles.")] = 0.0,
    replay_candles: ReplayCandlesOpt = 2000,
    every: Annotated[
        float,
        typer.Option(
            "--every",
            help="Seconds between watchlist tables while live (0: only when the session ends).",
        ),
    ] = 60.0,
) -> None:
    """Run the engine headless (live, or replay when Upbit is unreachable) and print each buy/sell signal.

    With a watchlist (--markets, --all-krw) every market is decided in one pass per closed
    candle; the watchlist (last price, action, confidence, reason, paper position) is printed
    every --every seconds and when the session ends. With `upquant serve` running it follows
    the server's session instead (starting one when none runs) until the session ends or
    Ctrl-C; the server keeps running.
    """
    from engine.live.engine import SignalEvent, StatusEvent
    from engine.params import check_session_args

    unit = check(market, unit)
    watchlist = _watchlist(market, markets)
    check_session_args(
        threshold=0.5 if threshold is None else threshold,
        replay_delay=replay_delay,
        replay_candles=replay_candles,
    )
    spec = _spec_table(strategy_spec)

    def show(event: object) -> None:
        if isinstance(event, StatusEvent):
            err.print(event.text, style="yellow" if event.level != "info" else None)
        elif isinstance(event, SignalEvent):
            show_signal(event.signal)

    async def main(con) -> Counter:
        from engine.live.inference_service import InferenceService
        from engine.service.live import LiveOps
        from engine.service.modelops import open_managed_session
        from engine.trading.spec import StrategySpec
        from engine.upbit.markets import split_watch

        names, units = split_watch(watchlist, unit)
        if all_krw:
            names = await LiveOps.watchlist_of(
                con, [] if markets is None else names, unit, offline=offline
            )
        session = await open_managed_session(
            con,
            names if len(names) > 1 else names[0],
            unit,
            units=units,
            threshold=threshold,
            offline=offline,
            replay_delay=replay_delay,
            replay_candles=replay_candles,
            inference=InferenceService(),
            strategy=None if spec is None else StrategySpec.from_dict(spec),
        )
        err.print(session.banner)
        engines = session.markets
        if engines is not None:
            engines.subscribe(show)
        else:
            session.engine.subscribe(show)
        ticker = None
        if engines is not None and len(engines.lanes) > 1 and every > 0 and session.mode == "live":
            ticker = asyncio.ensure_future(_tables(engines, every))
        try:
            await session.runner
        finally:
            if ticker is not None:
                ticker.cancel()
        if engines is not None and len(engines.lanes) > 1:
            show_watchlist(engines.states())
        lanes = engines.lanes.values() if engines is not None else [session.engine]
        return Counter(s.action for lane in lanes for s in lane.signals)

    import os

    if os.environ.get("UPQUANT_SERVER", "").lower() != "off":
        from engine.server.lifecycle import running_server

        info = running_server()  # a stale server.json (its process gone) is removed here
        if info is not None:  # the server owns the store: follow its session instead
            options: dict[str, Any] = {
                "threshold": threshold,
                "offline": offline,
                "replay_delay": replay_delay,
                "replay_candles": replay_candles,
                "watch": {"markets": watchlist, "all_krw": all_krw, "strategy_spec": spec},
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


def _watchlist(market: str, markets: str | None) -> list[str]:
    """--markets (comma-separated entries MARKET or MARKET:UNIT, checked), else --market."""
    from engine.upbit.markets import split_watch

    if markets is None:
        return [market]
    entries = [name.strip() for name in markets.split(",") if name.strip()]
    if not entries:
        raise CliError("--markets is empty", "give markets comma-separated, e.g. KRW-BTC,KRW-ETH")
    try:
        names, units = split_watch(entries, "")
    except ValueError as exc:
        raise CliError(f"--markets: {exc}", "e.g. --markets KRW-BTC,KRW-ETH:60") from None
    return [f"{name}:{units[name]}" if name in units else name for name in names]


def _spec_table(path: str | None) -> dict[str, Any] | None:
    """The strategy spec file's settings (checked here: errors name the file)."""
    if path is None:
        return None
    from engine.trading.spec import StrategySpec

    return StrategySpec.load(path).to_dict()


async def _tables(engines: Any, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        show_watchlist(engines.states())


def show_watchlist(states: list[Any]) -> None:
    """The watchlist as `upquant run` prints it: a row per market."""
    from rich.table import Table

    table = Table(
        "market", "unit", "last", "price", "action", "conf", "source", "position", "reason"
    )
    for s in states:
        stamp = getattr(s, "last_ts", None)
        position = getattr(s, "position_value", None)
        table.add_row(
            s.market,
            f"{s.unit}m",
            "-" if stamp is None else f"{stamp:%m-%d %H:%M}",
            "-" if s.last_price is None else f"{s.last_price:,.8g}",
            s.action or "-",
            "-" if s.confidence is None else f"{s.confidence:.2f}",
            s.source or "-",
            "-" if position is None else f"{position:,.0f} KRW",
            (s.reason or "")[:60],
        )
    console.print(table)


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
