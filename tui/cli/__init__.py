"""The `upquant` command line: parses options, calls one engine function, renders the result.

One module per command group (`data`, `features`, `models`, `store`, `train`, `evaluate`,
`predict`, `backtest`, `live` for `tui` and `run`, `server` for `serve`, `server` and
`token`); `options` holds the option types and parsing, `render` the consoles, JSON and
error lines. This module builds the typer app and runs it (`main`): exit codes, signals and
failures are decided here, once.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Any, NoReturn

import duckdb
import typer

from store.db import explain, interrupted
from tui.cli import (  # noqa: F401 - they add `models` commands
    backtest,
    data,
    evaluate,
    features,
    live,
    models,
    models_ab,
    models_metrics,
    models_ops,
    models_retrain,
    paper,
    predict,
    server,
    signals,
    store,
    train,
)
from tui.cli.render import ReportedFailure, error_line, is_user_error, report_failure, styled

# debug: the root command's --debug flag; signal: the signal that stopped the command
state: dict[str, Any] = {"debug": False, "signal": None}

app = typer.Typer(
    help="upquant: Upbit KRW-market trading workstation (data, models, live engine, TUI).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# the order is `upquant --help`'s
app.add_typer(data.data_app, name="data")
app.add_typer(features.features_app, name="features")
app.add_typer(models.models_app, name="models")
app.add_typer(store.store_app, name="store")
app.command()(backtest.backtest)
app.command()(paper.paper)
app.command()(signals.signals)
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command()(predict.predict)
app.command()(live.tui)
app.command()(live.run)
app.command()(server.serve)
app.add_typer(server.server_app, name="server")
app.add_typer(server.token_app, name="token")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    state["debug"] = debug


def _stop_like_ctrl_c(signum: int, _frame: object) -> None:
    """SIGTERM (kill, a job scheduler) and SIGHUP (a dropped SSH session) stop a command the
    way Ctrl-C does: the same cleanup runs (a training run is marked `interrupted`, buffered
    candles are written), because SIGINT's own handler, asyncio's inside `asyncio.run`,
    takes it from here."""
    state["signal"] = signum
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a background job of a non-interactive shell ignores SIGINT: stop here instead
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _report(exc: Exception, as_json: bool) -> NoReturn:
    """A failed command's one red line (and hint), then exit 1; --debug re-raises instead."""
    if state["debug"]:
        raise exc
    if isinstance(exc, duckdb.Error):  # damage found by a query, after the store opened
        exc = explain(exc)
    if is_user_error(exc):
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        report_failure(
            error_line(str(message)),
            getattr(exc, "hint", None),
            as_json=as_json and not isinstance(exc, ReportedFailure),
        )
    else:
        report_failure(
            error_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"),
            as_json=as_json,
        )
    sys.exit(1)


def main() -> None:
    """Entry point: run the typer app, turning failures into one red line and a non-zero exit
    (1: the command failed; 2: a malformed command line; 128 + N: stopped by signal N, e.g.
    130 for Ctrl-C)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # `nohup` keeps ignoring SIGHUP
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
        report_failure(error_line("aborted"), as_json=as_json)
        sys.exit(1)
    except typer.TyperException as exc:  # a malformed command line: one line, a hint, exit 2
        ctx = getattr(exc, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else None
        report_failure(error_line(exc.format_message()), hint, as_json=as_json)
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and exit 1
        if interrupted(exc):  # Ctrl-C or a signal arrived inside a DuckDB query
            code = 130
        else:
            _report(exc, as_json)
    if code == 130:
        signum = state.get("signal") or signal.SIGINT
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        report_failure(styled((f"interrupted ({name})", "red")), as_json=False)
        sys.exit(128 + int(signum))
    sys.exit(code if isinstance(code, int) else 0)
