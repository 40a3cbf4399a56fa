"""The `upquant` command line: parses options, calls one engine function, renders the result."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.table import Table

from tui.commands.backtest import backtest
from tui.commands.common import (
    JsonOpt,
    MarketArg,
    UnitOpt,
    check,
    connect,
    console,
    err,
    state,
)
from tui.commands.data import data_app

app = typer.Typer(
    help="upquant: Upbit KRW-market trading workstation (data, models, live engine, TUI).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.command()(backtest)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    state["debug"] = debug


# --- training and models ---------------------------------------------------------------------
@app.command()
def train(
    kind: Annotated[str, typer.Argument(help="Model kind: xgboost.")],
    market: MarketArg,
    unit: UnitOpt = "1",
    horizon: Annotated[int, typer.Option(help="Label horizon in candles.")] = 10,
    threshold: Annotated[
        float, typer.Option(help="Forward log-return beyond which a candle is buy/sell.")
    ] = 0.001,
    n_estimators: Annotated[
        int, typer.Option(help="XGBoost boosting rounds (early stopping on validation).")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--no-promote", help="Make it champion (default: only if none yet)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on stored candles, evaluate it on the test part beside the majority baseline, register it."""
    from engine.labels import LabelSpec
    from engine.training import train_model

    unit = check(market, unit)
    spinner = (
        err.status(f"training {kind} on {market} {unit}m…") if err.is_terminal else nullcontext()
    )
    with connect() as con, spinner:
        report = train_model(
            con,
            kind,
            market,
            unit,
            label_spec=LabelSpec(horizon=horizon, threshold=threshold),
            params={"n_estimators": n_estimators, "seed": seed},
            promote=promote,
        )
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "model": report.model.ref,
                    "id": report.model.id,
                    "status": report.model.status,
                    "sha256": report.model.sha256,
                    "rows": report.rows,
                    "metrics": report.metrics,
                    "class_balance": report.class_balance,
                }
            )
        )
        return
    record = report.model
    console.print(
        f"[bold]{record.ref}[/] (id {record.id}, {record.status}) · {len(report.features)} features ·"
        f" rows train {report.rows['train']:,} / validation {report.rows['validation']:,} / test {report.rows['test']:,}"
    )
    balance = report.class_balance["test"]
    console.print("test class balance: " + ", ".join(f"{k} {v:.1%}" for k, v in balance.items()))
    table = Table("test part", "accuracy", "macro F1", "log-loss")
    for label, key in ((record.ref, "test"), ("majority-class baseline", "baseline_majority_test")):
        m = report.metrics[key]
        table.add_row(label, f"{m['accuracy']:.4f}", f"{m['f1_macro']:.4f}", f"{m['log_loss']:.4f}")
    console.print(table)
    console.print(
        f"artifact {record.artifact} (sha256 {record.sha256[:16]}…, {record.size:,} bytes)"
    )


@models_app.command("list")
def models_list(
    market: Annotated[str | None, typer.Option(help="Only this market.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered models with status and test metrics."""
    from store.registry import list_models, model_metrics

    with connect() as con:
        records = list_models(con, market)
        metrics = {r.id: model_metrics(con, r.id) for r in records}
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "ref": r.ref,
                        "kind": r.kind,
                        "market": r.market,
                        "unit": r.unit,
                        "status": r.status,
                        "created_at": r.created_at.isoformat(),
                        "metrics": metrics[r.id],
                    }
                    for r in records
                ]
            )
        )
        return
    table = Table(
        "id", "model", "kind", "market", "unit", "status", "test acc", "test F1", "created (UTC)"
    )
    for r in records:
        test = metrics[r.id].get("test", {})
        table.add_row(
            str(r.id),
            r.ref,
            r.kind,
            r.market,
            r.unit,
            r.status,
            f"{test.get('accuracy', float('nan')):.4f}",
            f"{test.get('f1_macro', float('nan')):.4f}",
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


# --- live -------------------------------------------------------------------------------------
@app.command()
def tui(
    market: Annotated[
        str, typer.Option("--market", "-m", help="Market to watch, e.g. KRW-BTC.")
    ] = "KRW-BTC",
    unit: UnitOpt = "1",
    threshold: Annotated[
        float, typer.Option(help="Confidence threshold for model signals (adjust with +/-).")
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
    from tui.app import UpquantApp

    unit = check(market, unit)
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
    threshold: Annotated[float, typer.Option(help="Confidence threshold for model signals.")] = 0.5,
    offline: Annotated[
        bool, typer.Option(help="Do not contact Upbit: replay stored candles (or a demo market).")
    ] = False,
    replay_delay: Annotated[float, typer.Option(help="Seconds between replayed candles.")] = 0.0,
    replay_candles: Annotated[
        int, typer.Option(help="How many of the newest stored candles a replay plays.")
    ] = 2000,
) -> None:
    """Run the engine headless (live, or replay when Upbit is unreachable) and print each buy/sell signal."""
    from engine.live import SignalEvent, StatusEvent
    from engine.session import open_session

    unit = check(market, unit)

    def show(event: object) -> None:
        if isinstance(event, StatusEvent):
            err.print(f"[yellow]{event.text}[/]" if event.level != "info" else event.text)
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


def main() -> None:
    """Entry point: run the typer app, turning failures into one red line and a non-zero exit."""
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("[red]aborted[/]")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: typer prints them with the usage line
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:
        if state["debug"]:
            raise
        if _is_user_error(exc):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            err.print(f"[red]error:[/] {message}", highlight=False, markup=True)
            if getattr(exc, "hint", None):
                err.print(f"hint: {exc.hint}", highlight=False)
        else:
            err.print(
                f"[red]error:[/] {type(exc).__name__}: {exc} (run with --debug for the traceback)"
            )
        sys.exit(1)
