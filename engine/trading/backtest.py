"""Vectorised long/flat backtest: a signal at a candle's close fills at the next candle's open.

Conventions (the event loop in tests/test_backtest.py spells them out one candle at a time):
- `actions[t]` is decided at the close of candle t: buy goes long if flat, sell goes flat if
  long, hold keeps the position. It fills at the open of candle t + 1, so it can never earn
  candle t's own return; an action on the last candle has no next open and is ignored.
- The whole equity is traded: a buy pays `open * (1 + slippage)` and keeps `1 - fee` of the
  cash as units; a sell receives `open * (1 - slippage)` and keeps `1 - fee` of the proceeds.
- Equity is marked to each candle's close. A position still open after the last candle is
  sold at the last close (with fee and slippage, `exit_reason` "end"), so the final equity
  is cash and every trade in the list is closed.
- The paper broker's KRW sizing (engine/trading/paper.py) is asked for by `max_position`,
  `tick`, `min_order` and `close_at_end=False` (see `backtest`); the defaults above keep the
  whole-equity results bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from engine.research.metrics import MetricValue, candle_returns, majority_class, trading_metrics
from engine.trading.strategies import SmaCross, check_sma_periods, sma_cross_actions
from engine.trading.ticks import round_to_tick
from engine.upbit.markets import check_market, check_unit
from store.candles import load_candles

DEFAULT_FEE = 0.0005  # Upbit KRW markets: 0.05% per side
# Vectorised code's action codes: a models.CLASSES index minus one (classes_to_actions).
BUY, HOLD, SELL = 1, 0, -1
STRATEGIES = ("sma-cross",)
BUY_AND_HOLD, NO_TRADE, MAJORITY_CLASS = "buy-and-hold", "no-trade", "majority-class"
TRADE_COLUMNS = [
    "entry_ts",
    "entry_price",
    "exit_ts",
    "exit_price",
    "candles",
    "return",
    "pnl",
    "exit_reason",
    "units",
]


@dataclass
class BacktestResult:
    """One backtest: per-candle equity and positions, the trade list and its metrics.

    `positions` is 1 while long during a candle (held at its close), else 0. Trade prices are
    fill prices (slippage included); `return` is `exit / entry * (1 - fee)**2 - 1`, `pnl` the
    change of equity (starting at `initial`) over the trade.
    """

    name: str
    equity: pd.Series
    positions: pd.Series
    trades: pd.DataFrame
    metrics: dict[str, MetricValue]
    fee: float
    slippage_bps: float
    closed_at_end: bool
    initial: float = 1.0
    cash: pd.Series | None = None  # cash held at each close (what a long position left aside)

    @property
    def returns(self) -> pd.Series:
        """Per-candle returns of the equity curve (the first one against `initial`)."""
        values = candle_returns(self.equity.to_numpy(), self.initial)
        return pd.Series(values, index=self.equity.index, name="return")


@dataclass
class BacktestReport:
    """A strategy's backtest on stored candles beside the buy-and-hold and no-trade baselines."""

    market: str
    unit: str
    strategy: str
    first: pd.Timestamp  # the first and last candle backtested
    last: pd.Timestamp
    candles: int
    fee: float
    slippage_bps: float
    results: dict[str, BacktestResult] = field(default_factory=dict)
    note: str | None = None  # e.g. a bad artifact made it load the model's previous version

    @classmethod
    def over(
        cls,
        candles: pd.DataFrame,
        results: dict[str, BacktestResult],
        *,
        market: str,
        unit: str,
        strategy: str,
        note: str | None = None,
    ) -> BacktestReport:
        """The report of `results` (the strategy's first, each backtested with the same fee
        and slippage) on `candles`."""
        first = next(iter(results.values()))
        return cls(
            market=market,
            unit=unit,
            strategy=strategy,
            first=candles["ts"].iloc[0],
            last=candles["ts"].iloc[-1],
            candles=len(candles),
            fee=first.fee,
            slippage_bps=first.slippage_bps,
            results=results,
            note=note,
        )

    def metrics(self) -> dict[str, dict[str, MetricValue]]:
        """Metrics by result name: the strategy first, then the baselines."""
        return {name: result.metrics for name, result in self.results.items()}


# --- actions ----------------------------------------------------------------------------------
def action_codes(actions: np.ndarray | pd.Series | list[str] | list[int]) -> np.ndarray:
    """int8 codes BUY = 1, HOLD = 0, SELL = -1 from action names or from such codes.

    Classifier outputs are class indices (sell 0, hold 1, buy 2): use `classes_to_actions`.
    """
    values = np.asarray(actions)
    if values.dtype.kind in "iu":
        if len(values) and (values.min() < SELL or values.max() > BUY):
            raise ValueError(
                "action codes must be -1 (sell), 0 (hold) or 1 (buy);"
                f" got values from {values.min()} to {values.max()}"
                " (class indices? use classes_to_actions)"
            )
        return values.astype(np.int8, copy=False)
    if values.dtype.kind not in "OUT":
        raise ValueError(f"actions must be 'buy'/'sell'/'hold' or -1/0/1 codes; got {values.dtype}")
    text = values.astype(str)
    codes = np.zeros(len(text), dtype=np.int8)
    codes[text == "buy"] = BUY
    codes[text == "sell"] = SELL
    unknown = ~np.isin(text, ("buy", "sell", "hold"))
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"action #{first} is {str(text[first])!r}; expected 'buy', 'sell' or 'hold'"
        )
    return codes


def classes_to_actions(classes: np.ndarray) -> np.ndarray:
    """Class indices in CLASSES order (sell 0, hold 1, buy 2) as action codes (-1, 0, 1)."""
    return (np.asarray(classes).astype(np.int8) - 1).astype(np.int8)


def fills(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candles whose open fills each entry and each exit of long/flat `codes` (int8).

    A buy or sell at candle t fills at candle t + 1's open; only buys while flat and sells
    while long change anything. An exit at index n (the number of candles) is the sale at the
    last close of a position still open at the end; a buy on the last candle never fills.
    """
    n = len(codes)
    acted = np.flatnonzero(codes)
    action = codes[acted]
    # Keep the actions that flip the state; they alternate buy, sell, buy, ... from flat.
    flips = np.empty(len(action), dtype=bool)
    if len(action):
        flips[0] = action[0] == BUY
        np.not_equal(action[1:], action[:-1], out=flips[1:])
    at = acted[flips] + 1
    entries, exits = at[0::2], at[1::2]
    if len(entries) and entries[-1] == n:
        entries = entries[:-1]
    if len(exits) < len(entries):
        exits = np.append(exits, n)
    return entries, exits


def long_flat_positions(codes: np.ndarray) -> np.ndarray:
    """Position held during each candle (int8, 1 long / 0 flat) from actions at the closes.

    The position during candle t is the state after candle t - 1's close (flat during the
    first candle); the state is long after a buy until the next sell.
    """
    return _positions(_segments(len(codes), *fills(codes)))


def _positions(bounds: np.ndarray) -> np.ndarray:
    held = np.zeros(len(bounds) - 1, dtype=np.int8)
    held[1::2] = 1
    return np.repeat(held, np.diff(bounds))


def _segments(n: int, entries: np.ndarray, exits: np.ndarray) -> np.ndarray:
    """Bounds of alternating flat and long stretches: 0, e0, x0, e1, x1, ..., n."""
    bounds = np.empty(2 * len(entries) + 2, dtype=np.intp)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1:2], bounds[2:-1:2] = entries, exits
    return bounds


def buy_and_hold_actions(n: int) -> np.ndarray:
    """Buy at the first candle's close (filled at the second candle's open), then hold."""
    codes = np.zeros(n, dtype=np.int8)
    if n:
        codes[0] = BUY
    return codes


def no_trade_actions(n: int) -> np.ndarray:
    """Hold every candle: the trading face of a majority class of hold."""
    return np.zeros(n, dtype=np.int8)


def majority_class_actions(y_train: np.ndarray, n: int) -> np.ndarray:
    """Act on the training part's majority class every candle.

    Hold or sell never trades; buy is buy-and-hold.
    """
    return np.full(n, majority_class(y_train) - 1, dtype=np.int8)


# --- the backtest ------------------------------------------------------------------------------
def backtest(
    candles: pd.DataFrame,
    actions: np.ndarray | pd.Series | list[str] | list[int],
    *,
    fee: float = DEFAULT_FEE,
    slippage_bps: float = 0.0,
    unit: str | None = None,
    name: str = "strategy",
    initial: float = 1.0,
    max_position: float | None = None,
    tick: bool = False,
    min_order: float = 0.0,
    close_at_end: bool = True,
) -> BacktestResult:
    """Backtest long/flat `actions` (one per candle) on `candles` (canonical frame, ascending).

    `unit` annualises the metrics; by default it is taken from the candles' `unit` column.
    See the module docstring for the fill, fee and end-of-data rules. The paper broker's
    sizing (engine/trading/paper.py) is the same with `initial` in KRW and:
    `max_position` KRW caps what a buy spends (None: all cash), `tick` rounds fill prices to
    Upbit's tick (buys up, sells down), an order under `min_order` KRW is rejected (a buy:
    nothing happens; a sell: the position stays until the next sell that is large enough),
    and `close_at_end=False` leaves a position open after the last candle (marked to its
    close; its trade has exit_reason "open" and no exit, and is left out of the metrics).
    """
    n = len(candles)
    if n == 0:
        raise ValueError("no candles to backtest")
    codes = action_codes(actions)
    if len(codes) != n:
        raise ValueError(f"{len(codes)} actions for {n} candles; give one action per candle")
    if not 0.0 <= fee < 1.0:
        raise ValueError(f"fee is a fraction per side, 0 <= fee < 1; got {fee}")
    if not 0.0 <= slippage_bps < 10_000.0:
        raise ValueError(f"slippage is in basis points, 0 <= slippage < 10000; got {slippage_bps}")
    if unit is None:
        if "unit" not in candles.columns:
            raise ValueError("candles have no `unit` column; pass unit= to annualise the metrics")
        unit = str(candles["unit"].iloc[0])
    ts = pd.DatetimeIndex(candles["ts"])
    if not ts.is_monotonic_increasing:
        raise ValueError("candles must be in ascending `ts` order")
    opens = candles["open"].to_numpy(dtype="float64")
    closes = candles["close"].to_numpy(dtype="float64")
    if not (np.isfinite(opens).all() and np.isfinite(closes).all()):
        raise ValueError("candles hold non-finite open/close prices")

    if max_position is not None and not max_position > 0:
        raise ValueError(f"max_position is KRW above 0 or None; got {max_position}")
    if not min_order >= 0.0:
        raise ValueError(f"min_order is KRW >= 0; got {min_order}")
    slip = slippage_bps / 10_000.0
    keep = 1.0 - fee
    if max_position is None and not tick and min_order == 0.0 and close_at_end:
        # the whole equity traded: each round trip multiplies the cash, no loop needed
        entries, exits = fills(codes)
        bounds = _segments(n, entries, exits)
        positions = _positions(bounds)
        at_end = exits == n
        exit_at = np.minimum(exits, n - 1)  # the candle whose open (or, at the end, close) fills
        entry_price = opens[entries] * (1.0 + slip)
        exit_price = np.where(at_end, closes[-1], opens[exit_at]) * (1.0 - slip)

        # Cash after each round trip; units bought at each entry with the cash before it.
        cash_after = initial * np.cumprod(keep / entry_price * exit_price * keep)
        cash_before = np.concatenate(([initial], cash_after[:-1]))
        units = cash_before * keep / entry_price
        rest = np.zeros(len(entries))
    else:
        sized = _sized_trades(
            codes, opens, closes, initial, fee, slip, max_position, tick, min_order, close_at_end
        )
        entries, exits, entry_price, exit_price, units, rest, cash_before, cash_after = sized
        bounds = _segments(n, entries, exits)
        positions = _positions(bounds)
        at_end = exits == n
        exit_at = np.minimum(exits, n - 1)
    is_open = at_end & (not close_at_end)
    closed_at_end = close_at_end and bool(at_end.any())
    pnl = cash_after - cash_before

    # Stretches alternate flat (cash) and long (units marked to close, plus the cash a capped
    # buy did not spend) from `bounds`.
    levels = np.empty(2 * len(entries) + 1)
    levels[0] = initial
    levels[1::2], levels[2::2] = units, cash_after
    equity = np.repeat(levels, np.diff(bounds))
    np.multiply(equity, closes, out=equity, where=positions.view(bool))
    cash_levels = levels.copy()
    cash_levels[1::2] = rest
    cash = np.repeat(cash_levels, np.diff(bounds))
    if rest.any():
        equity += np.where(positions.view(bool), cash, 0.0)
    if closed_at_end:
        equity[-1] = cash[-1] = cash_after[-1]

    trade_returns = exit_price / entry_price * keep**2 - 1.0
    trades = pd.DataFrame(
        {
            "entry_ts": ts[entries],
            "entry_price": entry_price,
            "exit_ts": ts[exit_at],
            "exit_price": exit_price,
            "candles": exits - entries,
            "return": trade_returns,
            "pnl": pnl,
            "exit_reason": pd.Categorical.from_codes(
                at_end.view(np.int8) + is_open.view(np.int8), categories=["signal", "end", "open"]
            ),
            "units": units,
        },
        columns=TRADE_COLUMNS,
    )
    if is_open.any():
        trades.loc[is_open, ["exit_ts", "exit_price", "return", "pnl"]] = None
    metrics = trading_metrics(
        equity,
        unit,
        positions=positions,
        trade_returns=trade_returns[~is_open],
        trade_pnl=pnl[~is_open],
        ts=ts,
        initial=initial,
    )
    return BacktestResult(
        name=name,
        equity=pd.Series(equity, index=ts, name="equity"),
        positions=pd.Series(positions, index=ts, name="position"),
        trades=trades,
        metrics=metrics,
        fee=fee,
        slippage_bps=slippage_bps,
        closed_at_end=closed_at_end,
        initial=initial,
        cash=pd.Series(cash, index=ts, name="cash"),
    )


def _sized_trades(
    codes: np.ndarray,
    opens: np.ndarray,
    closes: np.ndarray,
    initial: float,
    fee: float,
    slip: float,
    max_position: float | None,
    tick: bool,
    min_order: float,
    close_at_end: bool,
) -> tuple[np.ndarray, ...]:
    """The trades of `codes` sized like the paper broker: entries, exits (n: open after the
    last candle), entry and exit prices, units, the cash a capped buy left aside, and the
    cash before and after each trade.

    The cash path needs a loop, but over trades (and rejected sells), not candles: the next
    buy and sell are found by binary search in the candles that carry one.
    """
    n, keep = len(codes), 1.0 - fee
    buys, sells = np.flatnonzero(codes == BUY), np.flatnonzero(codes == SELL)
    buy_fill = opens * (1.0 + slip)
    sell_fill = opens * (1.0 - slip)
    if tick:
        buy_fill, sell_fill = round_to_tick(buy_fill, up=True), round_to_tick(sell_fill, up=False)
    rows: list[tuple[int, int, float, float, float, float, float, float]] = []
    cash, after = initial, -1  # `after`: the candle after which the next buy may come
    while True:
        i = int(np.searchsorted(buys, after, side="right"))
        if i == len(buys) or buys[i] >= n - 1:
            break  # no buy left with a next open to fill at
        entry = int(buys[i]) + 1
        spend = cash if max_position is None else min(max_position, cash)
        if spend < min_order:
            break  # the cash does not change while flat: every later buy is rejected too
        price = float(buy_fill[entry])
        units = spend * keep / price
        rest = cash - spend
        j = int(np.searchsorted(sells, entry - 1, side="right"))
        exit_, out = n, np.nan
        while j < len(sells) and sells[j] < n - 1:
            candidate = int(sells[j]) + 1
            value = units * float(sell_fill[candidate])
            if value >= min_order:
                exit_, out = candidate, float(sell_fill[candidate])
                break
            j += 1  # rejected: still long until the next sell that is large enough
        if exit_ == n and close_at_end:
            out = closes[-1] * (1.0 - slip)
            if tick:
                out = float(round_to_tick(out, up=False))
        cash_after = rest + units * out * keep if exit_ < n or close_at_end else np.nan
        rows.append((entry, exit_, price, out, units, rest, cash, cash_after))
        if exit_ == n:
            break
        cash, after = cash_after, exit_ - 1
    table = np.array(rows, dtype=np.float64).reshape(-1, 8)
    entries, exits = table[:, 0].astype(np.intp), table[:, 1].astype(np.intp)
    return entries, exits, *(table[:, k] for k in range(2, 8))


def baseline_results(
    candles: pd.DataFrame,
    *,
    fee: float = DEFAULT_FEE,
    slippage_bps: float = 0.0,
    unit: str | None = None,
    y_train: np.ndarray | None = None,
) -> dict[str, BacktestResult]:
    """Buy-and-hold and no-trade on `candles`, plus the majority class of `y_train` if given.

    `y_train` holds a model's training labels (class indices); its majority class acted on
    every candle is the trading face of the majority-class baseline of model reports.
    """
    n = len(candles)
    signals = {BUY_AND_HOLD: buy_and_hold_actions(n), NO_TRADE: no_trade_actions(n)}
    if y_train is not None:
        signals[MAJORITY_CLASS] = majority_class_actions(y_train, n)
    return {
        name: backtest(candles, codes, fee=fee, slippage_bps=slippage_bps, unit=unit, name=name)
        for name, codes in signals.items()
    }


# --- stored candles ----------------------------------------------------------------------------
def run_backtest(
    con: duckdb.DuckDBPyConnection,
    strategy: str = "sma-cross",
    *,
    market: str,
    unit: str,
    start: datetime | None = None,
    end: datetime | None = None,
    fee: float = DEFAULT_FEE,
    slippage_bps: float = 0.0,
    fast: int = 10,
    slow: int = 30,
) -> BacktestReport:
    """Backtest `strategy` on the stored candles with start <= ts < end, beside baselines.

    Results, in order: the strategy (named like `SmaCross.name`), buy-and-hold, no-trade.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    check_market(market)
    unit = check_unit(unit)
    check_sma_periods(fast, slow)
    if start is not None and end is not None and start >= end:
        raise ValueError(
            f"the backtest starts ({start:%Y-%m-%d %H:%M}) at or after its end"
            f" ({end:%Y-%m-%d %H:%M}); the start must come first"
        )
    candles = load_candles(con, market, unit, start, end)
    if candles.empty:
        span = "" if start is None and end is None else f" from {start or '…'} to {end or '…'}"
        raise ValueError(
            f"no {market} unit {unit} candles in the store{span};"
            f" run `upquant data import` or `upquant data fetch {market} --unit {unit}` first"
        )
    rule = SmaCross(fast=fast, slow=slow)
    if len(candles) < slow + 2:
        raise ValueError(
            f"{len(candles)} {market} unit {unit} candles; {rule.name} needs at least"
            f" {slow + 2} to trade (a {slow}-candle SMA, a cross, and a next open)"
        )
    signals = sma_cross_actions(candles["close"].to_numpy(), fast, slow)
    results = {
        rule.name: backtest(
            candles, signals, fee=fee, slippage_bps=slippage_bps, unit=unit, name=rule.name
        ),
        **baseline_results(candles, fee=fee, slippage_bps=slippage_bps, unit=unit),
    }
    return BacktestReport.over(candles, results, market=market, unit=unit, strategy=rule.name)
