"""`upquant backtest`: a strategy on stored candles beside buy-and-hold and no-trade."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, MarketArg, UnitOpt, parse_time, workstation
from tui.cli.render import console, emit_json, styled, warn
from tui.fmt import fmt_count, fmt_pct, fmt_ratio, fmt_share

if TYPE_CHECKING:
    from engine.service.evaluation import BacktestResult

# engine.trading.backtest.DEFAULT_FEE (Upbit KRW, 0.05% per side); a literal keeps `--help` from
# importing pandas. tests/test_backtest.py checks that the two agree.
DEFAULT_FEE = 0.0005


def _duration(iso: str) -> str:
    import pandas as pd

    value = pd.Timedelta(iso)
    hours, seconds = divmod(int(value.total_seconds()) % 86400, 3600)
    return f"{value.days}d {hours:02d}:{seconds // 60:02d}"


# (metric key, row label, format); the order is the table's.
ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("total_return", "total return", fmt_pct),
    ("cagr", "CAGR", fmt_pct),
    ("sharpe", "Sharpe (annualised)", fmt_ratio),
    ("sortino", "Sortino (annualised)", fmt_ratio),
    ("calmar", "Calmar", fmt_ratio),
    ("max_drawdown", "max drawdown", fmt_share),
    ("max_drawdown_candles", "max drawdown duration (candles)", fmt_count),
    ("max_drawdown_time", "max drawdown duration (time)", _duration),
    ("trades", "trades", fmt_count),
    ("win_rate", "win rate", fmt_share),
    ("avg_trade_return", "average trade return", fmt_pct),
    ("profit_factor", "profit factor", fmt_ratio),
    ("turnover", "turnover (equity traded per year)", lambda v: f"{v:,.1f}×"),
    ("exposure", "exposure (candles in position)", fmt_share),
]


def _render(report: BacktestResult) -> None:
    console.print(
        styled(
            (report.market, "bold"),
            f" unit {report.unit} · {report.first:%Y-%m-%d %H:%M} →"
            f" {report.last:%Y-%m-%d %H:%M} UTC · {report.candles:,} candles ·"
            f" fee {report.fee:.3%} per side · slippage {report.slippage_bps:g} bps",
        ),
        highlight=False,
    )
    if report.strategy_hash is not None:
        model = f" · model {report.model}" if report.model else ""
        console.print(
            styled(
                "strategy spec ",
                (str(report.strategy_spec), "bold"),
                f" · hash {report.strategy_hash}{model}",
            ),
            highlight=False,
        )
    table = Table("metric", *report.results)
    for key, label, fmt in ROWS:
        values = [metrics.get(key) for metrics in report.results.values()]
        table.add_row(label, *("n/a" if v is None else fmt(v) for v in values))
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
    strategy_spec: Annotated[
        Path | None,
        typer.Option(
            "--strategy-spec",
            help="Backtest this strategy spec (.json or .toml); one that uses the AI reads"
            " --model, else the market's champion. Its own threshold and rules replace"
            " --strategy, --threshold, --fast and --slow.",
        ),
    ] = None,
    parity: Annotated[
        bool,
        typer.Option(
            "--parity",
            help="Run the strategy spec (the default spec without --strategy-spec) both ways:"
            " replayed through the live engine with the paper broker, and vectorised; report"
            " the signals, fills and PnL of each and their largest difference (exit 1 when"
            " they differ).",
        ),
    ] = False,
    cash: Annotated[
        float, typer.Option("--cash", help="--parity: the paper broker's KRW cash.")
    ] = 1_000_000.0,
    as_json: JsonOpt = False,
) -> None:
    """Backtest a strategy on stored candles beside buy-and-hold and no-trade, with fees."""
    from engine.params import check_confidence
    from engine.service.evaluation import BacktestRequest

    check_confidence(threshold)  # typer takes any float, NaN included
    spec = None
    if strategy_spec is not None:
        from engine.trading.spec import StrategySpec

        spec = StrategySpec.load(strategy_spec).to_dict()  # the error names the file and key
    start = parse_time(from_, "--from") if from_ else None
    end = parse_time(to, "--to") if to else None
    if start is not None and end is not None and start >= end:
        raise ValueError(f"--from {from_} is not before --to {to}; give the earlier time first")
    if parity:
        _parity(market, unit, start, end, spec, model, fee, slippage, cash, as_json)
        return
    request = BacktestRequest(
        market=market,
        strategy=strategy,
        unit=unit,
        start=start,
        end=end,
        fee=fee,
        slippage=slippage,
        fast=fast,
        slow=slow,
        model=model,
        threshold=threshold,
        strategy_spec=spec,
        trades=False,
        equity=False,
    )
    with workstation() as ws:
        report = ws.backtest(request)
    for warning in report.warnings:  # e.g. a --from inside the model's training part
        warn(warning)
    if report.note:
        warn(report.note)
    if as_json:
        emit_json(report.model_dump(mode="json", exclude={"trades", "warnings", "equity"}))
        return
    _render(report)


def _parity(
    market: str,
    unit: str,
    start: Any,
    end: Any,
    spec: dict[str, Any] | None,
    model: str | None,
    fee: float,
    slippage: float,
    cash: float,
    as_json: bool,
) -> None:
    """`backtest --parity`: the replay and the vectorised backtest side by side."""
    from engine.service.parity import ParityRequest

    request = ParityRequest(
        market=market,
        unit=unit,
        start=start,
        end=end,
        strategy_spec=spec,
        model=model,
        fee=fee,
        slippage=slippage,
        initial_cash=cash,
    )
    with workstation() as ws:
        report = ws.parity(request)
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        console.print(
            styled(
                (report.market, "bold"),
                f" unit {report.unit} · {report.first:%Y-%m-%d %H:%M} →"
                f" {report.last:%Y-%m-%d %H:%M} UTC · {report.candles:,} candles · strategy"
                f" {report.strategy} · model {report.model or 'none (the rules)'}",
            ),
            highlight=False,
        )
        table = Table("", "replay (live engine)", "backtest (vectorised)")
        for action in ("buy", "sell", "hold"):
            table.add_row(
                f"{action} signals",
                f"{report.live.signals[action]:,}",
                f"{report.backtest.signals[action]:,}",
            )
        table.add_row("fills", f"{report.live.fills:,}", f"{report.backtest.fills:,}")
        table.add_row(
            "final equity (KRW)",
            f"{report.live.final_equity:,.2f}",
            f"{report.backtest.final_equity:,.2f}",
        )
        table.add_row("PnL (KRW)", f"{report.live.pnl:+,.2f}", f"{report.backtest.pnl:+,.2f}")
        console.print(table)
        console.print(
            f"differences: {report.action_differences} actions, {report.fill_differences}"
            f" fills; largest relative: price {report.max_price_difference:.2e}, units"
            f" {report.max_units_difference:.2e}, equity {report.max_equity_difference:.2e};"
            f" PnL {report.pnl_difference:+.2e} KRW (tolerance {report.tolerance:g})"
        )
        if report.first_difference:
            console.print(f"first difference: {report.first_difference}")
        console.print(
            styled(("EQUAL", "bold green"))
            if report.equal
            else styled(("DIFFERENT", "bold red"), ": the replay and the backtest disagree")
        )
    if not report.equal:
        raise typer.Exit(1)
