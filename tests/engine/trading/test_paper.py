"""The paper broker candle by candle against the vectorised backtest; Upbit's tick table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.trading.backtest import DEFAULT_FEE, backtest
from engine.trading.paper import BrokerConfig, Fill, PaperBroker
from engine.trading.strategies import sma_cross_actions
from engine.trading.ticks import round_to_tick, tick_size
from tests.conftest import shared_candles

ACTIONS = np.array(["sell", "hold", "buy"])


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return shared_candles("KRW-ETH_60m.csv", 3000, market="KRW-ETH", unit="60")


def drive(
    candles: pd.DataFrame, codes: np.ndarray, config: BrokerConfig, cap: float | None
) -> tuple[list[Fill], np.ndarray, np.ndarray, PaperBroker]:
    """The live engine's two calls per candle: on_candle (fill at the open, mark to the
    close), then the order decided at the close."""
    broker = PaperBroker(config)
    market = str(candles["market"].iloc[0])
    fills: list[Fill] = []
    equity, cash = np.empty(len(candles)), np.empty(len(candles))
    rows = zip(candles["ts"], candles["open"], candles["close"], ACTIONS[codes + 1], strict=True)
    for i, (ts, open_, close, action) in enumerate(rows):
        fills += broker.on_candle(market, ts, float(open_), float(close))
        equity[i], cash[i] = broker.equity, broker.cash
        broker.order(market, ts, str(action), cap)
    return fills, equity, cash, broker


def backtest_fills(result) -> list[tuple[pd.Timestamp, str, float, float]]:
    rows = []
    for trade in result.trades.itertuples():
        rows.append((trade.entry_ts, "buy", trade.entry_price, trade.units))
        if trade.exit_reason == "signal":
            rows.append((trade.exit_ts, "sell", trade.exit_price, trade.units))
    return rows


def random_codes(n: int, seed: int, p_trade: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1, 0, 1], dtype=np.int8), n, p=[p_trade, 1 - 2 * p_trade, p_trade])


CASES = {
    # name: (actions, initial cash, max_position, slippage bps, minimum order, tick)
    "sma uncapped, tick": ("sma", 1_000_000.0, None, 0.0, 5_000.0, True),
    # ETH's prices / 600 (about 4,500 to 7,900 KRW: the 1 and 5 KRW ticks)
    "altcoin prices, capped": ("sma/600", 1_000_000.0, 100_000.0, 5.0, 5_000.0, True),
    "sma capped, slippage": ("sma", 1_000_000.0, 300_000.0, 7.5, 5_000.0, True),
    "random uncapped, no tick": ("random", 1_000_000.0, None, 3.0, 0.0, False),
    "random capped above cash": ("random", 200_000.0, 1_000_000.0, 0.0, 5_000.0, True),
    "random capped": ("random", 1_000_000.0, 50_000.0, 2.0, 5_000.0, True),
    # a buy of about the minimum: losing trades push it under and buys get rejected
    "tiny cash": ("random", 5_100.0, None, 10.0, 5_000.0, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broker_matches_the_backtest_on_every_candle(candles: pd.DataFrame, case: str) -> None:
    kind, initial, cap, slippage, min_order, tick = CASES[case]
    if kind.endswith("/600"):
        candles = candles.assign(open=candles["open"] / 600, close=candles["close"] / 600)
    closes = candles["close"].to_numpy()
    codes = (
        sma_cross_actions(closes, 10, 30)
        if kind.startswith("sma")
        else random_codes(len(candles), 7, 0.05)
    )
    config = BrokerConfig(initial, DEFAULT_FEE, slippage, min_order, tick)
    fills, equity, cash, broker = drive(candles, codes, config, cap)
    result = backtest(
        candles, codes, slippage_bps=slippage, initial=initial, max_position=cap, tick=tick,
        min_order=min_order, close_at_end=False,
    )  # fmt: skip

    expected = backtest_fills(result)
    assert len(fills) == len(expected) > 10
    for fill, (ts, side, price, units) in zip(fills, expected, strict=True):
        assert (fill.ts, fill.side) == (ts, side)
        assert fill.price == pytest.approx(price, rel=1e-9)
        assert fill.units == pytest.approx(units, rel=1e-9)
    np.testing.assert_allclose(equity, result.equity.to_numpy(), rtol=1e-9)
    assert result.cash is not None
    np.testing.assert_allclose(cash, result.cash.to_numpy(), rtol=1e-9, atol=1e-6)
    assert bool(broker.positions) == bool(result.positions.iloc[-1])
    book = broker.book()
    assert book.equity == pytest.approx(initial + book.realised_pnl + book.unrealised_pnl, rel=1e-9)
    if tick:  # every fill price is on its tick
        assert all(f.price % tick_size(f.price) == 0 for f in fills)
    if cap is not None and cap < initial:
        assert max(f.value + f.fee for f in fills if f.side == "buy") == pytest.approx(cap)
    rejected = [o for o in broker.recent_orders if o.status == "rejected"]
    if case == "tiny cash":
        assert rejected and all("minimum" in str(o.reason) for o in rejected)
        free = drive(candles, codes, BrokerConfig(initial, DEFAULT_FEE, slippage, 0.0, tick), cap)
        assert len(free[0]) > len(fills)  # the minimum changed what was traded
    else:
        assert not rejected


def test_a_sell_under_the_minimum_waits_for_the_next_sell(candles: pd.DataFrame) -> None:
    """A position worth less than the minimum cannot be sold; the next sell that is worth
    enough closes it, in the broker and in the backtest alike."""
    spend, keep = 10_000.0, 1 - DEFAULT_FEE
    opens = candles["open"].to_numpy()[:200]
    worth = spend * keep / round_to_tick(opens[1], up=True) * round_to_tick(opens, up=False)
    # the first open where the position is worth less than it cost, then one worth more
    low = 2 + int(np.flatnonzero(worth[2:] < spend * keep)[0])
    high = low + 1 + int(np.flatnonzero(worth[low + 1 :] > worth[low])[0])
    minimum = min(float(worth[low] + worth[high]) / 2, spend)
    codes = np.zeros(len(opens), dtype=np.int8)
    codes[[0, low - 1, high - 1]] = [1, -1, -1]
    window = candles.iloc[: len(opens)]
    fills, equity, _, broker = drive(window, codes, BrokerConfig(spend, min_order=minimum), None)
    result = backtest(
        window, codes, initial=spend, tick=True, min_order=minimum, close_at_end=False
    )
    assert [(f.ts, f.side) for f in fills] == [(t, s) for t, s, _, _ in backtest_fills(result)]
    assert [f.ts for f in fills] == list(window["ts"].iloc[[1, high]])
    assert broker.recent_orders[1].status == "rejected"
    assert "position stays open" in str(broker.recent_orders[1].reason)
    np.testing.assert_allclose(equity, result.equity.to_numpy(), rtol=1e-9)


def test_the_backtest_defaults_are_todays_results(candles: pd.DataFrame) -> None:
    """With all cash traded, no tick and no minimum, the sized loop gives what the cumprod
    path gives: the new options change nothing unless asked for."""
    codes = random_codes(len(candles), 3, 0.05)
    today = backtest(candles, codes, slippage_bps=4.0, initial=1_000_000.0)
    looped = backtest(candles, codes, slippage_bps=4.0, initial=1_000_000.0, max_position=1e18)
    np.testing.assert_allclose(looped.equity, today.equity, rtol=1e-9)
    np.testing.assert_allclose(looped.trades["pnl"], today.trades["pnl"], rtol=1e-9)
    assert list(looped.trades["exit_reason"]) == list(today.trades["exit_reason"])
    left_open = backtest(candles, codes, initial=1_000_000.0, close_at_end=False)
    if left_open.positions.iloc[-1]:
        assert left_open.trades["exit_reason"].iloc[-1] == "open"
        assert left_open.equity.iloc[-1] != today.equity.iloc[-1]


def test_the_broker_never_orders_what_it_cannot_do() -> None:
    broker = PaperBroker(BrokerConfig(tick=False))
    ts = pd.Timestamp("2025-01-01", tz="UTC")
    assert broker.order("KRW-BTC", ts, "sell") is None  # flat
    assert broker.order("KRW-BTC", ts, "hold") is None
    order = broker.order("KRW-BTC", ts, "buy", 400_000.0)
    assert order is not None and order.status == "pending"
    assert broker.order("KRW-BTC", ts, "buy") is None  # one pending order per market
    (fill,) = broker.on_candle("KRW-BTC", ts + pd.Timedelta("1min"), 100.0, 110.0)
    assert (fill.price, fill.units, fill.cash) == (
        100.0,
        400_000 * (1 - DEFAULT_FEE) / 100,
        600_000,
    )
    assert broker.order("KRW-BTC", ts, "buy") is None  # long
    assert broker.equity == pytest.approx(600_000 + fill.units * 110)
    with pytest.raises(ValueError, match="'buy', 'sell' or 'hold'"):
        broker.order("KRW-BTC", ts, "short")


# --- Upbit's tick ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("price", "tick"),
    [
        (2_000_000.0, 1_000),
        (1_000_000.0, 1_000),
        (999_999.0, 500),
        (500_000.0, 500),
        (499_999.0, 100),
        (100_000.0, 100),
        (99_999.0, 50),
        (50_000.0, 50),
        (49_999.0, 10),
        (10_000.0, 10),
        (9_999.0, 5),
        (5_000.0, 5),
        (4_999.0, 1),
        (100.0, 1),
        (99.9, 0.1),
        (10.0, 0.1),
        (9.99, 0.01),
        (1.0, 0.01),
        (0.999, 0.001),
        (0.1, 0.001),
        (0.0999, 0.0001),
        (0.00001, 0.0000001),
        (0.000009, 0.00000001),
    ],
)
def test_tick_size_at_the_band_edges(price: float, tick: float) -> None:
    assert float(tick_size(price)) == pytest.approx(tick, rel=1e-12)


def test_rounding_buys_up_and_sells_down() -> None:
    prices = np.array([999_999.5, 1_000_000.0, 1_000_000.3, 99.95, 12.34, 0.3, 4_999.2])
    up = round_to_tick(prices, up=True)
    down = round_to_tick(prices, up=False)
    np.testing.assert_array_equal(up, [1_000_000, 1_000_000, 1_001_000, 100.0, 12.4, 0.3, 5_000])
    np.testing.assert_array_equal(down, [999_500, 1_000_000, 1_000_000, 99.9, 12.3, 0.3, 4_999])
    with pytest.raises(ValueError, match="above 0"):
        round_to_tick(0.0, up=True)
