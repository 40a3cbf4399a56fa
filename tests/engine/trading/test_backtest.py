"""The vectorised backtest against a plain event loop, next-open fills, fees, SMA, the store."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from engine.trading.backtest import (
    BUY,
    DEFAULT_FEE,
    HOLD,
    SELL,
    action_codes,
    backtest,
    baseline_results,
    buy_and_hold_actions,
    classes_to_actions,
    long_flat_positions,
    majority_class_actions,
    no_trade_actions,
    run_backtest,
)
from engine.trading.strategies import (
    SmaCross,
    actions_from_probs,
    sma_cross_actions,
    threshold_action,
)
from store.candles import upsert_candles
from tests.conftest import shared_candles


# --- the reference: one candle at a time, as a trader would -----------------------------------
@dataclass
class LoopResult:
    equity: np.ndarray
    positions: np.ndarray
    trades: pd.DataFrame


def event_loop_backtest(
    candles: pd.DataFrame, actions: list[str], fee: float, slippage_bps: float
) -> LoopResult:
    """Readable long/flat backtest: decide at the close, fill at the next open, pay fees."""
    opens, closes = candles["open"].to_numpy(), candles["close"].to_numpy()
    ts = list(candles["ts"])
    slip = slippage_bps / 10_000.0
    cash, units, long = 1.0, 0.0, False
    pending = "hold"  # the decision taken at the previous candle's close
    entry: tuple[pd.Timestamp, float, float] | None = None  # ts, price, cash before
    equity, positions, trades = [], [], []

    def close_trade(when: pd.Timestamp, price: float, reason: str) -> None:
        nonlocal cash, units, long
        assert entry is not None
        entry_ts, entry_price, cash_before = entry
        cash = units * price * (1.0 - fee)
        units, long = 0.0, False
        trades.append(
            {
                "entry_ts": entry_ts,
                "entry_price": entry_price,
                "exit_ts": when,
                "exit_price": price,
                "return": price / entry_price * (1.0 - fee) ** 2 - 1.0,
                "pnl": cash - cash_before,
                "exit_reason": reason,
            }
        )

    for t in range(len(candles)):
        if pending == "buy" and not long:
            price = opens[t] * (1.0 + slip)
            entry = (ts[t], price, cash)
            units, cash, long = cash * (1.0 - fee) / price, 0.0, True
        elif pending == "sell" and long:
            close_trade(ts[t], opens[t] * (1.0 - slip), "signal")
        positions.append(1 if long else 0)
        equity.append(cash + units * closes[t])
        pending = actions[t]
    if long:  # still open after the last candle: sell at its close
        close_trade(ts[-1], closes[-1] * (1.0 - slip), "end")
        equity[-1] = cash
    return LoopResult(np.array(equity), np.array(positions), pd.DataFrame(trades))


def random_actions(n: int, seed: int, p_act: float) -> list[str]:
    rng = np.random.default_rng(seed)
    return list(rng.choice(["sell", "hold", "buy"], size=n, p=[p_act / 2, 1 - p_act, p_act / 2]))


def assert_same_as_loop(candles: pd.DataFrame, actions: list[str], fee: float, slip: float) -> None:
    fast = backtest(candles, actions, fee=fee, slippage_bps=slip)
    loop = event_loop_backtest(candles, actions, fee, slip)
    np.testing.assert_array_equal(fast.positions.to_numpy(), loop.positions)
    np.testing.assert_allclose(fast.equity.to_numpy(), loop.equity, rtol=1e-12, atol=0)
    assert len(fast.trades) == len(loop.trades) > 0
    for col in ("entry_ts", "exit_ts", "entry_price", "exit_price", "return"):
        np.testing.assert_array_equal(fast.trades[col].to_numpy(), loop.trades[col].to_numpy())
    np.testing.assert_allclose(fast.trades["pnl"], loop.trades["pnl"], rtol=1e-12, atol=1e-15)
    assert list(fast.trades["exit_reason"]) == list(loop.trades["exit_reason"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("p_act", [0.02, 0.3, 1.0])
def test_vectorised_backtest_equals_the_event_loop(
    btc_1m: pd.DataFrame, seed: int, p_act: float
) -> None:
    assert_same_as_loop(btc_1m, random_actions(len(btc_1m), seed, p_act), fee=0.0005, slip=3.0)


@pytest.mark.parametrize("seed", [10, 11])
def test_event_loop_agreement_on_hourly_candles(seed: int) -> None:
    candles = shared_candles("KRW-ETH_60m.csv", 8000, market="KRW-ETH", unit="60")
    actions = random_actions(len(candles), seed, 0.1)
    actions[-1] = "buy"  # a buy on the last candle never fills
    assert_same_as_loop(candles, actions, fee=0.001, slip=10.0)


def test_position_open_at_the_end_is_sold_at_the_last_close(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(500)
    fee, slip = 0.0005, 5.0
    result = backtest(candles, buy_and_hold_actions(len(candles)), fee=fee, slippage_bps=slip)
    (trade,) = result.trades.itertuples()
    assert trade.entry_ts == candles["ts"].iloc[1] and trade.exit_ts == candles["ts"].iloc[-1]
    assert trade.entry_price == candles["open"].iloc[1] * 1.0005
    assert trade.exit_price == candles["close"].iloc[-1] * 0.9995
    assert trade.exit_reason == "end" and result.closed_at_end
    bought, sold = candles["open"].iloc[1] * 1.0005, candles["close"].iloc[-1] * 0.9995
    expected = sold / bought * (1 - fee) ** 2
    assert result.equity.iloc[-1] == pytest.approx(expected, rel=1e-12)
    assert result.metrics["total_return"] == pytest.approx(expected - 1.0, rel=1e-12)
    assert result.positions.iloc[0] == 0 and (result.positions.iloc[1:] == 1).all()


# --- no lookahead: a decision at close t fills at open t + 1 ----------------------------------
def test_positions_follow_the_previous_close() -> None:
    codes = action_codes(["buy", "hold", "buy", "sell", "sell", "hold", "buy", "sell"])
    assert long_flat_positions(codes).tolist() == [0, 1, 1, 1, 0, 0, 0, 1]
    # A sell while flat and a buy on the last candle change nothing.
    assert long_flat_positions(action_codes(["sell", "hold", "buy"])).tolist() == [0, 0, 0]


def test_a_signal_cannot_earn_its_own_candle() -> None:
    """Buying every up candle at its close would win every trade if fills used that candle."""
    n = 200
    closes = np.where(np.arange(n) % 2 == 0, 100.0, 101.0)  # down, up, down, up, ...
    opens = np.concatenate(([100.0], closes[:-1]))
    candles = _frame(opens, closes)
    knows_candle = np.where(closes > opens, "buy", "sell")  # perfect knowledge of candle t
    result = backtest(candles, knows_candle, fee=0.0, slippage_bps=0.0, unit="1")
    assert len(result.trades) > 90
    # Each buy fills at the up candle's close level (101) and rides the next candle down.
    np.testing.assert_array_equal(result.trades["entry_price"], 101.0)
    assert (result.trades["return"] < 0).all()
    assert result.metrics["total_return"] < 0


def test_perfect_foresight_of_close_to_close_returns_is_not_earned(btc_1m: pd.DataFrame) -> None:
    closes = btc_1m["close"].to_numpy()
    up = np.diff(closes, prepend=closes[0]) > 0  # known only at candle t's close
    actions = np.where(up, BUY, SELL).astype(np.int8)
    result = backtest(btc_1m, actions, fee=0.0, slippage_bps=0.0)
    if_filled_at_t = np.prod(np.where(up[1:], closes[1:] / closes[:-1], 1.0)) - 1.0
    assert if_filled_at_t > 1.0  # the lookahead version would double the money in 4 days
    assert result.metrics["total_return"] < 0.25 * if_filled_at_t
    # Every candle's return comes from the position decided one close earlier.
    returns = result.returns.to_numpy()
    positions = result.positions.to_numpy()
    opens = btc_1m["open"].to_numpy()
    held = (positions[1:] == 1) & (positions[:-1] == 1)
    np.testing.assert_allclose(returns[1:][held], (closes[1:] / closes[:-1] - 1.0)[held], rtol=1e-9)
    entered = (positions[1:] == 1) & (positions[:-1] == 0)
    np.testing.assert_allclose(
        returns[1:][entered][:-1], (closes[1:] / opens[1:] - 1.0)[entered][:-1], atol=1e-12
    )


# --- fees and slippage --------------------------------------------------------------------------
def test_fees_reduce_returns_exactly_by_the_expected_factor(btc_1m: pd.DataFrame) -> None:
    actions = random_actions(len(btc_1m), 7, 0.2)
    free = backtest(btc_1m, actions, fee=0.0, slippage_bps=0.0)
    fee = 0.0005
    paid = backtest(btc_1m, actions, fee=fee, slippage_bps=0.0)
    trades = len(free.trades)
    assert trades == len(paid.trades) > 100
    np.testing.assert_allclose(
        1.0 + paid.trades["return"], (1.0 + free.trades["return"]) * (1 - fee) ** 2, rtol=1e-12
    )
    np.testing.assert_allclose(
        paid.equity.iloc[-1], free.equity.iloc[-1] * (1 - fee) ** (2 * trades), rtol=1e-12
    )
    slipped = backtest(btc_1m, actions, fee=0.0, slippage_bps=2.0)
    s = 2.0 / 10_000
    np.testing.assert_allclose(
        slipped.equity.iloc[-1], free.equity.iloc[-1] * ((1 - s) / (1 + s)) ** trades, rtol=1e-12
    )


def test_no_trade_and_majority_class_baselines(btc_1m: pd.DataFrame) -> None:
    n = len(btc_1m)
    flat = backtest(btc_1m, no_trade_actions(n))
    assert (flat.equity == 1.0).all() and flat.trades.empty
    m = flat.metrics
    assert m["total_return"] == 0.0 and m["trades"] == 0 and m["exposure"] == 0.0
    assert np.isnan(m["win_rate"]) and np.isnan(m["sharpe"]) and np.isnan(m["profit_factor"])
    hold, buy, sell = 1, 2, 0  # class indices in CLASSES order
    assert (majority_class_actions(np.array([hold, hold, buy]), n) == HOLD).all()
    assert (majority_class_actions(np.array([sell, sell, hold]), n) == SELL).all()
    as_buy = backtest(btc_1m, majority_class_actions(np.array([buy, buy, hold]), n))
    buy_and_hold = backtest(btc_1m, buy_and_hold_actions(n))
    np.testing.assert_array_equal(as_buy.equity, buy_and_hold.equity)
    assert classes_to_actions(np.array([sell, hold, buy])).tolist() == [SELL, HOLD, BUY]


def test_baselines_include_the_majority_class_when_labels_are_given(btc_1m: pd.DataFrame) -> None:
    assert list(baseline_results(btc_1m)) == ["buy-and-hold", "no-trade"]
    labelled = baseline_results(btc_1m, y_train=np.array([1, 1, 0, 2]), fee=0.001)
    assert list(labelled) == ["buy-and-hold", "no-trade", "majority-class"]
    majority = labelled["majority-class"]  # hold: never trades
    assert majority.metrics["trades"] == 0 and majority.metrics["total_return"] == 0.0


def test_bad_actions_are_named() -> None:
    with pytest.raises(ValueError, match="action #1 is 'short'"):
        action_codes(["buy", "short"])
    with pytest.raises(ValueError, match="class indices"):
        action_codes(np.array([0, 1, 2]))
    candles = _frame(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="2 actions for 3 candles"):
        backtest(candles, ["buy", "hold"], unit="1")


# --- SMA crossover ----------------------------------------------------------------------------
@pytest.mark.parametrize(("fast", "slow"), [(10, 30), (3, 7), (5, 50), (1, 2)])
def test_sma_cross_actions_equal_smacross_decide(
    btc_1m: pd.DataFrame, fast: int, slow: int
) -> None:
    closes = btc_1m["close"].to_numpy()[:3000]
    rule = SmaCross(fast=fast, slow=slow)
    expected = [rule.decide(closes[max(0, t - 2 * slow) : t + 1])[0] for t in range(len(closes))]
    vectorised = sma_cross_actions(closes, fast, slow)
    np.testing.assert_array_equal(vectorised, action_codes(expected))
    assert (vectorised != HOLD).sum() > 10


def test_sma_cross_actions_agree_on_ties_and_fractional_prices() -> None:
    rng = np.random.default_rng(3)
    flat_then_moving = np.concatenate((np.full(60, 7.3), 7.3 + np.cumsum(rng.normal(0, 0.01, 900))))
    closes = np.round(flat_then_moving, 2)  # ticks: many exact ties between the averages
    rule = SmaCross(fast=4, slow=12)
    expected = [rule.decide(closes[: t + 1])[0] for t in range(len(closes))]
    np.testing.assert_array_equal(sma_cross_actions(closes, 4, 12), action_codes(expected))
    with pytest.raises(ValueError, match="fast < slow"):
        sma_cross_actions(closes, 12, 4)


def test_each_strategy_decides_per_candle_as_its_vectorised_form_on_real_candles() -> None:
    """Every candle of the shared BTC 60m history: the live engine's per-candle decision
    (SmaCross.decide, threshold_action) equals the backtest's vectorised signal."""
    candles = shared_candles("KRW-BTC_60m.csv", unit="60")
    closes = candles["close"].to_numpy()
    rule = SmaCross()
    per_candle = [
        rule.decide(closes[max(0, t - 2 * rule.slow) : t + 1])[0] for t in range(len(closes))
    ]
    signals = sma_cross_actions(closes, rule.fast, rule.slow)
    np.testing.assert_array_equal(signals, action_codes(per_candle))
    assert (signals == BUY).sum() > 100 and (signals == SELL).sum() > 100
    # probabilities that follow the candles: the log return's sign and size decide the class
    move = np.diff(np.log(closes), prepend=np.log(closes[0])) * 300
    logits = np.column_stack([-move, np.full(len(move), 0.2), move])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for threshold in (0.4, 0.5, 0.7):
        expected = [threshold_action(row, threshold)[0] for row in probs]
        codes = actions_from_probs(probs, threshold)
        np.testing.assert_array_equal(codes, action_codes(expected))
        assert {-1, 0, 1} <= set(codes.tolist())


# --- on the store -------------------------------------------------------------------------------
def test_run_backtest_on_the_store(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m)
    report = run_backtest(con, "sma-cross", market="KRW-BTC", unit="1", fee=0.001, slippage_bps=1.0)
    assert list(report.results) == ["sma-cross(10,30)", "buy-and-hold", "no-trade"]
    assert report.candles == len(btc_1m) and report.first == btc_1m["ts"].iloc[0]
    signals = sma_cross_actions(btc_1m["close"].to_numpy())
    direct = backtest(btc_1m, signals, fee=0.001, slippage_bps=1.0)
    strategy = report.results["sma-cross(10,30)"]
    np.testing.assert_array_equal(strategy.equity.to_numpy(), direct.equity.to_numpy())
    assert strategy.metrics["trades"] == len(direct.trades) > 0
    assert report.results["no-trade"].metrics["total_return"] == 0.0
    assert report.results["buy-and-hold"].metrics["trades"] == 1
    assert set(report.metrics()["buy-and-hold"]) == set(strategy.metrics)

    start, end = btc_1m["ts"].iloc[1000], btc_1m["ts"].iloc[2000]
    window = run_backtest(con, market="KRW-BTC", unit="1", start=start, end=end, fast=5, slow=20)
    assert window.candles == 1000 and window.first == start and window.last < end
    assert window.strategy == "sma-cross(5,20)"


def test_run_backtest_says_what_is_wrong(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.head(100))
    with pytest.raises(ValueError, match="unknown strategy 'moon'; choose one of sma-cross"):
        run_backtest(con, "moon", market="KRW-BTC", unit="1")
    with pytest.raises(ValueError, match="no KRW-ETH unit 1 candles in the store.*data import"):
        run_backtest(con, market="KRW-ETH", unit="1")
    later, earlier = btc_1m["ts"].iloc[50], btc_1m["ts"].iloc[10]
    with pytest.raises(ValueError, match="the start must come first"):
        run_backtest(con, market="KRW-BTC", unit="1", start=later, end=earlier)
    with pytest.raises(ValueError, match="needs at least 202"):
        run_backtest(con, market="KRW-BTC", unit="1", slow=200, fast=50)


# --- the command ---------------------------------------------------------------------------------
def _command_app() -> typer.Typer:
    from tui.cli.backtest import backtest as backtest_command

    app = typer.Typer()
    app.command()(backtest_command)
    app.command("other")(lambda: None)  # two commands, so the name is part of the usage
    return app


def test_backtest_command_prints_the_metric_table_and_json(con, btc_1m: pd.DataFrame) -> None:
    import tui.cli.backtest as command

    assert command.DEFAULT_FEE == DEFAULT_FEE
    upsert_candles(con, btc_1m)
    con.close()  # the command opens the store itself
    runner = CliRunner()
    table = runner.invoke(_command_app(), ["backtest", "KRW-BTC", "--unit", "1", "--slippage", "2"])
    assert table.exit_code == 0, table.output
    for text in ("sma-cross(10,30)", "buy-and-hold", "no-trade", "max drawdown", "profit factor"):
        assert text in table.output
    args = ["backtest", "KRW-BTC", "--json", "--fast", "5", "--slow", "20"]
    raw = runner.invoke(_command_app(), args)
    assert raw.exit_code == 0, raw.output
    payload = json.loads(raw.output)
    assert payload["strategy"] == "sma-cross(5,20)" and payload["candles"] == len(btc_1m)
    no_trade = payload["results"]["no-trade"]
    assert no_trade["trades"] == 0 and no_trade["win_rate"] is None
    assert payload["results"]["buy-and-hold"]["max_drawdown_time"].startswith("P")


def test_backtest_command_rejects_bad_input(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.head(100))
    con.close()
    runner = CliRunner()
    cases = [
        (["KRW-BTC", "--strategy", "moon"], "unknown strategy 'moon'"),
        (["KRW-XRP"], "no KRW-XRP unit 1 candles"),
        (["KRW-BTC", "--from", "2025-09-02", "--to", "2025-09-01"], "is not before --to"),
    ]
    for args, message in cases:
        result = runner.invoke(_command_app(), ["backtest", *args])
        assert isinstance(result.exception, ValueError), result.output
        assert message in str(result.exception)


def _frame(opens: np.ndarray, closes: np.ndarray) -> pd.DataFrame:
    ts = pd.date_range("2025-01-01", periods=len(closes), freq="min", tz="UTC")
    return pd.DataFrame(
        {
            "ts": ts,
            "open": opens,
            "high": np.maximum(opens, closes),
            "low": np.minimum(opens, closes),
            "close": closes,
            "volume": 1.0,
        }
    )
