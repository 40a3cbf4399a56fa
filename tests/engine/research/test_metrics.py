"""Metrics on cases small enough to compute by hand, edge cases included."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from engine.research.metrics import (
    cagr,
    candle_returns,
    class_balance,
    classification_metrics,
    confusion_matrix,
    majority_baseline,
    max_drawdown,
    periods_per_year,
    regression_metrics,
    sharpe_ratio,
    sortino_ratio,
    trade_metrics,
    trading_metrics,
)

SELL, HOLD, BUY = 0, 1, 2
HOURS = pd.date_range("2025-01-01", periods=6, freq="h", tz="UTC")


# --- classification ---------------------------------------------------------------------------
def test_classification_metrics_per_class_and_macro() -> None:
    y_true = np.array([SELL, SELL, HOLD, HOLD, BUY, BUY])
    y_pred = np.array([SELL, HOLD, HOLD, HOLD, BUY, SELL])
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert (m["precision_sell"], m["recall_sell"]) == pytest.approx((1 / 2, 1 / 2))
    assert (m["precision_hold"], m["recall_hold"]) == pytest.approx((2 / 3, 1.0))
    assert (m["precision_buy"], m["recall_buy"]) == pytest.approx((1.0, 1 / 2))
    f1 = {"sell": 0.5, "hold": 0.8, "buy": 2 / 3}
    for name, value in f1.items():
        assert m[f"f1_{name}"] == pytest.approx(value)
    assert m["f1_macro"] == pytest.approx(sum(f1.values()) / 3)
    assert m["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert "log_loss" not in m

    matrix = confusion_matrix(y_true, y_pred)
    assert list(matrix.index) == list(matrix.columns) == ["sell", "hold", "buy"]
    assert matrix.to_numpy().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_log_loss_and_the_majority_baseline() -> None:
    y = np.array([HOLD, HOLD, BUY, SELL])
    proba = np.tile([0.25, 0.5, 0.25], (4, 1))
    m = classification_metrics(y, np.full(4, HOLD), proba)
    assert m["log_loss"] == pytest.approx(-(2 * math.log(0.5) + 2 * math.log(0.25)) / 4)
    y_train = np.array([HOLD, HOLD, HOLD, BUY])
    base = majority_baseline(y_train, y)
    assert base["accuracy"] == 0.5 and base["recall_hold"] == 1.0 and base["precision_buy"] == 0.0
    assert class_balance(y) == {"sell": 0.25, "hold": 0.5, "buy": 0.25}


# --- regression --------------------------------------------------------------------------------
def test_regression_metrics_by_hand() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 3.0, 2.0, 5.0])
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(3 / 4)
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(3 / 4))
    assert m["r2"] == pytest.approx(1 - 3 / 5)
    assert m["ic"] == pytest.approx(statistics.correlation(list(y), list(p)))
    assert m["rank_ic"] == pytest.approx(0.8)  # ranks 1,2,3,4 vs 1,3,2,4


def test_rank_ic_sees_order_and_constants_give_nan() -> None:
    y = np.arange(1.0, 11.0)
    m = regression_metrics(y, np.exp(y))  # same order, far from linear
    assert m["rank_ic"] == pytest.approx(1.0) and m["ic"] < 0.9
    flat = regression_metrics(y, np.full(10, 3.0))
    assert math.isnan(flat["ic"]) and math.isnan(flat["rank_ic"])
    assert math.isnan(regression_metrics(np.ones(3), np.array([1.0, 2.0, 3.0]))["r2"])
    with pytest.raises(ValueError, match="1 non-finite"):
        regression_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


# --- trading -----------------------------------------------------------------------------------
def test_periods_per_year_is_24_7() -> None:
    assert periods_per_year("1") == 525_600
    assert periods_per_year("60") == 8_760
    assert periods_per_year("240") == 2_190
    assert periods_per_year("D") == 365


def test_max_drawdown_depth_and_duration() -> None:
    equity = np.array([1.0, 1.2, 0.9, 1.0, 1.3, 1.1])
    depth, candles, time = max_drawdown(equity, HOURS)
    # Peak 1.2 at candle 1 falls to 0.9 (-25%) and is regained at candle 4: 3 candles, 3 hours.
    assert depth == pytest.approx(0.25) and candles == 3 and time == pd.Timedelta(hours=3)
    never_back = max_drawdown(np.array([1.0, 2.0, 1.5, 1.0]))
    assert never_back[:2] == (pytest.approx(0.5), 2) and never_back[2] is None  # to the end
    underwater_from_start = max_drawdown(np.array([0.9, 0.95, 1.01]), HOURS[:3], initial=1.0)
    assert underwater_from_start == (pytest.approx(0.1), 3, pd.Timedelta(hours=2))
    assert max_drawdown(np.array([1.0, 1.0, 1.1, 1.2]), HOURS[:4]) == (0.0, 0, pd.Timedelta(0))


def test_sharpe_and_sortino() -> None:
    per_year = periods_per_year("60")
    returns = np.array([0.01, -0.01, 0.02, 0.0])
    expected = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(per_year)
    assert sharpe_ratio(returns, per_year) == pytest.approx(expected)
    downside = math.sqrt(0.01**2 / 4)
    assert sortino_ratio(returns, per_year) == pytest.approx(0.005 / downside * math.sqrt(per_year))
    growing = candle_returns(1.01 ** np.arange(1, 50))  # constant 1% per candle
    assert math.isnan(sharpe_ratio(growing, per_year))  # zero volatility: NaN, not inf
    assert math.isnan(sortino_ratio(growing, per_year))  # no losing candle
    assert math.isnan(sharpe_ratio(np.zeros(10), per_year))


def test_cagr_annualises_by_the_candle_unit() -> None:
    assert cagr(0.10, 8_760, periods_per_year("60")) == pytest.approx(0.10)
    assert cagr(0.10, 4_380, periods_per_year("60")) == pytest.approx(1.1**2 - 1)
    assert cagr(0.10, 525_600 * 2, periods_per_year("1")) == pytest.approx(math.sqrt(1.1) - 1)
    assert cagr(-1.0, 100, 8_760) == -1.0


def test_trade_metrics_profit_factor_and_win_rate() -> None:
    m = trade_metrics(np.array([0.1, -0.05, 0.2, -0.05]))
    assert m == {
        "trades": 4,
        "win_rate": 0.5,
        "avg_trade_return": pytest.approx(0.05),
        "profit_factor": pytest.approx(3.0),
    }
    by_pnl = trade_metrics(np.array([0.1, -0.1]), trade_pnl=np.array([0.2, -0.1]))
    assert by_pnl["profit_factor"] == pytest.approx(2.0)
    no_losses = trade_metrics(np.array([0.1, 0.2]))
    assert no_losses["win_rate"] == 1.0 and math.isnan(no_losses["profit_factor"])
    none = trade_metrics(np.array([]))
    assert none["trades"] == 0
    assert math.isnan(none["win_rate"]) and math.isnan(none["profit_factor"])


def test_trading_metrics_of_an_equity_curve() -> None:
    equity = pd.Series([1.0, 1.2, 0.9, 1.0, 1.3, 1.1], index=HOURS)
    positions = np.array([0, 1, 1, 0, 1, 1], dtype=np.int8)
    m = trading_metrics(equity, "60", positions=positions, trade_returns=np.array([0.0, 0.1]))
    assert m["total_return"] == pytest.approx(0.1)
    assert m["cagr"] == pytest.approx(1.1 ** (8_760 / 6) - 1)
    assert m["max_drawdown"] == pytest.approx(0.25)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.25)
    assert m["max_drawdown_candles"] == 3 and m["max_drawdown_time"] == pd.Timedelta(hours=3)
    assert m["exposure"] == pytest.approx(4 / 6)
    # Entries and exits: in at 1, out at 3, in at 4, out after the end: 4 × the equity.
    assert m["turnover"] == pytest.approx(4 * 8_760 / 6)
    assert m["trades"] == 2 and m["win_rate"] == 0.5

    flat = trading_metrics(np.ones(5), "1", positions=np.zeros(5), trade_returns=np.array([]))
    assert flat["total_return"] == 0.0 and flat["max_drawdown"] == 0.0
    assert flat["exposure"] == 0.0 and flat["turnover"] == 0.0 and flat["trades"] == 0
    for key in ("sharpe", "sortino", "calmar", "win_rate", "profit_factor"):
        assert math.isnan(flat[key]), key
    unknown = trading_metrics(np.ones(3), "1")
    assert math.isnan(unknown["exposure"]) and math.isnan(unknown["trades"])
    assert unknown["max_drawdown_time"] is pd.NaT


def test_a_quiet_market_is_annualised_by_wall_time_not_by_its_candle_count() -> None:
    """Half the minutes of a year have a candle (Upbit has none for a minute without a trade);
    doubling the equity over that year is +100 % a year, not the +300 % the count implies."""
    n = 262_800
    equity = np.exp(np.linspace(0.0, np.log(2.0), n))
    every_other_minute = pd.date_range("2025-01-01", periods=n, freq="2min", tz="UTC")
    timed = trading_metrics(equity, "1", ts=every_other_minute)
    assert timed["cagr"] == pytest.approx(1.0, rel=1e-5)
    assert trading_metrics(equity, "1")["cagr"] == pytest.approx(3.0, rel=1e-5)
    gapless = pd.date_range("2025-01-01", periods=n, freq="1min", tz="UTC")
    assert trading_metrics(equity, "1", ts=gapless)["sharpe"] == pytest.approx(
        trading_metrics(equity, "1")["sharpe"], rel=1e-12
    )
