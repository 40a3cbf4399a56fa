"""A strategy spec backtested on stored candles beside the buy-and-hold and no-trade baselines.

The spec's actions are `spec_actions` over the candles of the range and, before them, the
`history_needed() - 1` candles its rules and regime measure read: a range's first decisions
are the ones a live engine primed with that history would take (flat, no cooldown, a low
regime: the state starts at the range's first candle). The model's answers come in
as probabilities per candle (NaN where it gave none: the spec's fallback decides there).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from engine.trading.backtest import DEFAULT_FEE, BacktestReport, backtest, baseline_results
from engine.trading.spec import StrategySpec, spec_actions
from engine.upbit.markets import check_market, check_unit
from store.candles import last_candles, load_candles

PROBABILITIES = ["p_sell", "p_hold", "p_buy"]


def spec_label(spec: StrategySpec) -> str:
    """The spec's name in a report: its name and the start of its hash."""
    return f"{spec.name} ({spec.hash[:12]})"


def spec_range_actions(
    con: duckdb.DuckDBPyConnection,
    spec: StrategySpec,
    *,
    market: str,
    unit: str,
    start: datetime | None = None,
    end: datetime | None = None,
    probabilities: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The candles of `market`/`unit` with start <= ts < end and the spec's action code on
    each, its rules reading the `history_needed() - 1` candles before `start`.
    `probabilities` (ts, p_sell, p_hold, p_buy) are the model's answers; candles without
    one, and every candle when None, have no answer."""
    market, unit = check_market(market), check_unit(unit)
    lookback = start
    if start is not None:
        before = last_candles(
            con,
            [market],
            unit,
            spec.history_needed() - 1,
            pd.Timestamp(start) - pd.Timedelta(1, "us"),
        )
        lookback = before["ts"].iloc[0].to_pydatetime() if len(before) else start
    candles = load_candles(con, market, unit, lookback, end)
    stamps = pd.DatetimeIndex(candles["ts"])
    inside = np.ones(len(candles), dtype=bool) if start is None else stamps >= pd.Timestamp(start)
    if not inside.any():
        raise ValueError(
            f"no {market} unit {unit} candles in the store for that range;"
            f" run `upquant data fetch {market} --unit {unit}` first"
        )
    probs = np.full((len(candles), 3), np.nan)
    if probabilities is not None and len(probabilities):
        at = stamps.get_indexer(pd.DatetimeIndex(probabilities["ts"]))
        found = at >= 0
        probs[at[found]] = probabilities[PROBABILITIES].to_numpy(dtype="float64")[found]
    warmup = int(np.argmax(inside))
    actions = spec_actions(spec, candles, probs, warmup=warmup)[warmup:]
    return candles.iloc[warmup:].reset_index(drop=True), actions


def run_spec_backtest(
    con: duckdb.DuckDBPyConnection,
    spec: StrategySpec,
    *,
    market: str,
    unit: str,
    start: datetime | None = None,
    end: datetime | None = None,
    probabilities: pd.DataFrame | None = None,
    fee: float = DEFAULT_FEE,
    slippage_bps: float = 0.0,
    note: str | None = None,
) -> BacktestReport:
    """Backtest `spec` on `market`/`unit` candles with start <= ts < end (see
    `spec_range_actions`) beside the baselines."""
    unit = check_unit(unit)
    candles, actions = spec_range_actions(
        con, spec, market=market, unit=unit, start=start, end=end, probabilities=probabilities
    )
    label = spec_label(spec)
    results = {
        label: backtest(
            candles, actions, fee=fee, slippage_bps=slippage_bps, unit=unit, name=label
        ),
        **baseline_results(candles, fee=fee, slippage_bps=slippage_bps, unit=unit),
    }
    return BacktestReport.over(
        candles, results, market=check_market(market), unit=unit, strategy=label, note=note
    )
