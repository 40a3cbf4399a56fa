"""`upquant backtest`: a strategy on stored candles beside buy-and-hold and no-trade."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, MarketArg, UnitOpt, connect, parse_time
from tui.cli.render import console, emit_json, styled, warn

if TYPE_CHECKING:
    from datetime import datetime

    import duckdb
    import pandas as pd

    from engine.trading.backtest import BacktestReport

# engine.trading.backtest.DEFAULT_FEE (Upbit KRW, 0.05% per side); a literal keeps `--help` from
# importing pandas. tests/test_backtest.py checks that the two agree.
DEFAULT_FEE = 0.0005


def _pct(value: float) -> str:
    return f"{value:+.2%}"


def _plain_pct(value: float) -> str:
    return f"{value:.2%}"


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _duration(value: pd.Timedelta) -> str:
    hours, seconds = divmod(int(value.total_seconds()) % 86400, 3600)
    return f"{value.days}d {hours:02d}:{seconds // 60:02d}"


# (metric key, row label, format); the order is the table's.
ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("total_return", "total return", _pct),
    ("cagr", "CAGR", _pct),
    ("sharpe", "Sharpe (annualised)", _ratio),
    ("sortino", "Sortino (annualised)", _ratio),
    ("calmar", "Calmar", _ratio),
    ("max_drawdown", "max drawdown", _plain_pct),
    ("max_drawdown_candles", "max drawdown duration (candles)", _count),
    ("max_drawdown_time", "max drawdown duration (time)", _duration),
    ("trades", "trades", _count),
    ("win_rate", "win rate", _plain_pct),
    ("avg_trade_return", "average trade return", _pct),
    ("profit_factor", "profit factor", _ratio),
    ("turnover", "turnover (equity traded per year)", lambda v: f"{v:,.1f}×"),
    ("exposure", "exposure (candles in position)", _plain_pct),
]


def _missing(value: object) -> bool:
    import pandas as pd

    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _json_value(value: object) -> object:
    """JSON has no NaN or durations: undefined metrics are null, durations ISO 8601."""
    import pandas as pd

    if _missing(value):
        return None
    if isinstance(value, pd.Timedelta):
        return value.isoformat()
    return value


def _render(report: BacktestReport) -> None:
    console.print(
        styled(
            (report.market, "bold"),
            f" unit {report.unit} · {report.first:%Y-%m-%d %H:%M} →"
            f" {report.last:%Y-%m-%d %H:%M} UTC · {report.candles:,} candles ·"
            f" fee {report.fee:.3%} per side · slippage {report.slippage_bps:g} bps",
        ),
        highlight=False,
    )
    table = Table("metric", *report.results)
    for key, label, fmt in ROWS:
        values = [result.metrics[key] for result in report.results.values()]
        table.add_row(label, *("n/a" if _missing(v) else fmt(v) for v in values))
    console.print(table)
    console.print(
        "Signals act at a candle's close and fill at the next open; a position still open at"
        " the end is sold at the last close.\n"
        "n/a: undefined (no trades, no losing trade, or no volatility).",
        highlight=False,
    )


def backtest(
    market: MarketArg,
    strategy: Annotated[
        str, typer.Option("--strategy", "-s", help="Strategy to test: sma-cross.")
    ] = "sma-cross",
    unit: UnitOpt = "1",
    from_: Annotated[
        str | None,
        typer.Option("--from", help="First candle to use (UTC, inclusive), e.g. 2024-01-01."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Use candles before this time (UTC, exclusive); default: all."),
    ] = None,
    fee: Annotated[
        float, typer.Option(help="Fee per side as a fraction; Upbit KRW markets: 0.0005 (0.05%).")
    ] = DEFAULT_FEE,
    slippage: Annotated[
        float, typer.Option(help="Slippage per fill in basis points (1 bp = 0.01%), against you.")
    ] = 0.0,
    fast: Annotated[int, typer.Option(help="sma-cross: fast SMA length in candles.")] = 10,
    slow: Annotated[int, typer.Option(help="sma-cross: slow SMA length in candles.")] = 30,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Backtest this model's signals (name, name@version or id) instead of a rule;"
            " --from defaults to the start of its test part, so nothing it trained on counts.",
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="--model: confidence a buy/sell must reach, in [0, 1].")
    ] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """Backtest a strategy on stored candles beside buy-and-hold and no-trade, with fees."""
    from engine.params import check_confidence
    from engine.trading.backtest import run_backtest

    check_confidence(threshold)  # typer takes any float, NaN included
    start = parse_time(from_, "--from") if from_ else None
    end = parse_time(to, "--to") if to else None
    if start is not None and end is not None and start >= end:
        raise ValueError(f"--from {from_} is not before --to {to}; give the earlier time first")
    with connect() as con:
        if model is not None:
            report = _model_report(
                con, model, market, start, end, threshold, fee, slippage, fast, slow
            )
        else:
            report = run_backtest(
                con,
                strategy,
                market=market,
                unit=unit,
                start=start,
                end=end,
                fee=fee,
                slippage_bps=slippage,
                fast=fast,
                slow=slow,
            )
    if report.note:
        warn(report.note)
    if as_json:
        payload = {
            "market": report.market,
            "unit": report.unit,
            "strategy": report.strategy,
            "first": report.first.isoformat(),
            "last": report.last.isoformat(),
            "candles": report.candles,
            "fee": report.fee,
            "slippage_bps": report.slippage_bps,
            "note": report.note,
            "fills": "next candle's open; an open position is sold at the last close",
            "results": {
                name: {key: _json_value(value) for key, value in metrics.items()}
                for name, metrics in report.metrics().items()
            },
        }
        emit_json(payload)
        return
    _render(report)


def _model_report(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    market: str,
    start: datetime | None,
    end: datetime | None,
    threshold: float,
    fee: float,
    slippage: float,
    fast: int,
    slow: int,
) -> BacktestReport:
    """The model's signals from its test part on (or from --from, warning when that reaches
    back into what it was trained or tuned on)."""
    from engine.training.batch import model_backtest
    from engine.training.held_out import held_out_start

    held_out = held_out_start(con, ref, start)
    if held_out.warning:
        warn(held_out.warning)
    return model_backtest(
        con,
        ref,
        market=market,
        start=held_out.start,
        end=end,
        threshold=threshold,
        fee=fee,
        slippage_bps=slippage,
        fast=fast,
        slow=slow,
        preloaded=held_out.preloaded,
    )
