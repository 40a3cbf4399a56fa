"""The `upquant` command line: parses options, calls one engine function, renders the result."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from typing import Annotated

import duckdb
import typer
from rich.text import Text

from store.db import explain
from tui.commands.backtest import backtest
from tui.commands.common import (
    ReportedFailure,
    UnitOpt,
    check,
    connect,
    console,
    emit_json,
    err,
    state,
    styled,
)
from tui.commands.data import data_app
from tui.commands.evaluate import evaluate
from tui.commands.features import features_build, features_list
from tui.commands.models import models_app
from tui.commands.predict import predict
from tui.commands.store import store_app
from tui.commands.train import train

app = typer.Typer(
    help="upquant: Upbit KRW-market trading workstation (data, models, live engine, TUI).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(help="Feature specs and feature files.", no_args_is_help=True)
features_app.command("build")(features_build)
features_app.command("list")(features_list)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")
app.command()(backtest)
app.command()(train)
app.command()(evaluate)
app.command()(predict)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    state["debug"] = debug


# --- live -------------------------------------------------------------------------------------
@app.command()
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
    offline: Annotated[
        bool, typer.Option(help="Do not contact Upbit: replay stored candles (or a demo market).")
    ] = False,
    replay_delay: Annotated[float, typer.Option(help="Seconds between replayed candles.")] = 0.25,
    replay_candles: Annotated[
        int, typer.Option(help="How many of the newest stored candles a replay plays.")
    ] = 2000,
) -> None:
    """Open the workstation: live Upbit candles, champion predictions, signals. Falls back to replay/demo offline."""
    from engine.params import check_session_args
    from tui.app import UpquantApp

    unit = check(market, unit)
    check_session_args(
        threshold=threshold, replay_delay=replay_delay, replay_candles=replay_candles
    )
    with connect() as con:
        UpquantApp(
            con,
            market,
            unit,
            threshold=threshold,
            offline=offline,
            replay_delay=replay_delay,
            replay_candles=replay_candles,
        ).run()


@app.command()
def run(
    market: Annotated[
        str, typer.Option("--market", "-m", help="Market, e.g. KRW-BTC.")
    ] = "KRW-BTC",
    unit: UnitOpt = "1",
    threshold: Annotated[
        float, typer.Option(help="Confidence threshold for model signals, in [0.34, 0.95].")
    ] = 0.5,
    offline: Annotated[
        bool, typer.Option(help="Do not contact Upbit: replay stored candles (or a demo market).")
    ] = False,
    replay_delay: Annotated[float, typer.Option(help="Seconds between replayed candles.")] = 0.0,
    replay_candles: Annotated[
        int, typer.Option(help="How many of the newest stored candles a replay plays.")
    ] = 2000,
) -> None:
    """Run the engine headless (live, or replay when Upbit is unreachable) and print each buy/sell signal."""
    from engine.live.engine import SignalEvent, StatusEvent
    from engine.live.session import open_session
    from engine.params import check_session_args

    unit = check(market, unit)
    check_session_args(
        threshold=threshold, replay_delay=replay_delay, replay_candles=replay_candles
    )

    def show(event: object) -> None:
        if isinstance(event, StatusEvent):
            err.print(event.text, style="yellow" if event.level != "info" else None)
        elif isinstance(event, SignalEvent) and event.signal.action != "hold":
            s = event.signal
            console.print(
                f"{s.ts:%Y-%m-%d %H:%M} {s.market} {s.action.upper():4} {s.confidence:.2f} {s.source}: {s.reason}"
            )

    async def main(con) -> Counter:
        session = await open_session(
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

    with connect() as con:
        counts = asyncio.run(main(con))
    console.print(
        f"signals: {sum(counts.values()):,} (buy {counts['buy']}, sell {counts['sell']}, hold {counts['hold']})"
    )


def _is_user_error(exc: BaseException) -> bool:
    """Our own exceptions and bad values are reported as one line; anything else is a bug."""
    module = type(exc).__module__.split(".")[0]
    return module in {"engine", "store", "models", "tui"} or isinstance(exc, (ValueError, KeyError))


def _stop_like_ctrl_c(signum: int, _frame: object) -> None:
    """SIGTERM (kill, a job scheduler) and SIGHUP (a dropped SSH session) stop a command the
    way Ctrl-C does: the same cleanup runs (a training run is marked `interrupted`, buffered
    candles are written), because SIGINT's own handler, asyncio's inside `asyncio.run`,
    takes it from here."""
    state["signal"] = signum
    signal.raise_signal(signal.SIGINT)


def _report(line: Text, hint: str | None = None, *, as_json: bool = False) -> None:
    """One `error:` line and a `hint:` line on stderr; with `--json`, the same as a JSON object
    on stdout too, so a script reading stdout always gets JSON."""
    try:
        if as_json:
            emit_json({"error": line.plain.removeprefix("error: "), "hint": hint})
        err.print(line, highlight=False, soft_wrap=True)
        if hint:
            err.print(f"hint: {hint}", highlight=False, soft_wrap=True)
    except OSError:  # the terminal is gone (SIGHUP): the exit code still tells
        pass


def _error(message: str) -> Text:
    return styled(("error:", "red"), " ", message)


def main() -> None:
    """Entry point: run the typer app, turning failures into one red line and a non-zero exit
    (1: the command failed; 2: a malformed command line; 128 + N: stopped by signal N, e.g.
    130 for Ctrl-C)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_like_ctrl_c)
    as_json = "--json" in sys.argv[1:]
    try:
        # standalone_mode=False: typer returns typer.Exit's code, and 130 for Ctrl-C
        # (KeyboardInterrupt), instead of exiting; anything else propagates to us
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except typer.Abort:  # a declined confirmation (models delete) or end of input
        _report(_error("aborted"), as_json=as_json)
        sys.exit(1)
    except typer.TyperException as exc:  # a malformed command line: one line, a hint, exit 2
        ctx = getattr(exc, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else None
        _report(_error(exc.format_message()), hint, as_json=as_json)
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:
        if state["debug"]:
            raise
        if isinstance(exc, duckdb.Error):  # damage found by a query, after the store opened
            exc = explain(exc)
        if _is_user_error(exc):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            _report(
                _error(str(message)),
                getattr(exc, "hint", None),
                as_json=as_json and not isinstance(exc, ReportedFailure),
            )
        else:
            _report(
                _error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"),
                as_json=as_json,
            )
        sys.exit(1)
    if code == 130:
        signum = state.get("signal") or signal.SIGINT
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        _report(styled((f"interrupted ({name})", "red")), as_json=False)
        sys.exit(128 + int(signum))
    sys.exit(code if isinstance(code, int) else 0)
