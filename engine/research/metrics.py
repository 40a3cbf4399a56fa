"""Metrics every report shows: classification, regression and trading, plus the baselines.

One rule for edge cases throughout: a ratio whose denominator is zero (Sharpe of constant
returns, profit factor without a losing trade, Calmar without a drawdown, an IC of a constant
series) is NaN, never inf; a metric over zero trades is NaN, except counts, which are 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.upbit.markets import unit_minutes
from models import CLASSES

MINUTES_PER_YEAR = 365 * 24 * 60  # crypto trades 24/7: 525,600 one-minute candles a year

# A trading metric is a float, except the drawdown duration in wall time.
type MetricValue = float | pd.Timedelta


# --- classification ---------------------------------------------------------------------------
def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy, precision/recall/F1 per class and macro, and log-loss when `proba` is given.

    Classes are the indices of CLASSES (sell, hold, buy); a class never predicted (or never
    present) scores 0 for its precision (recall), as scikit-learn's `zero_division=0`.
    """
    # imported here: scikit-learn takes ~0.3 s to import, and the live engine and the TUI
    # import this module (trading metrics) without ever scoring a classifier
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support

    labels = list(range(len(CLASSES)))
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out["precision_macro"] = float(np.mean(precision))
    out["recall_macro"] = float(np.mean(recall))
    for i, name in enumerate(CLASSES):
        out[f"precision_{name}"] = float(precision[i])
        out[f"recall_{name}"] = float(recall[i])
        out[f"f1_{name}"] = float(f1[i])
    if proba is not None:
        out["log_loss"] = float(log_loss(y_true, np.clip(proba, 1e-12, 1.0), labels=labels))
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Counts with true classes as rows and predicted classes as columns, both named."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    counts = sk_confusion_matrix(y_true, y_pred, labels=list(range(len(CLASSES))))
    return pd.DataFrame(
        counts,
        index=pd.Index(CLASSES, name="true"),
        columns=pd.Index(CLASSES, name="predicted"),
    )


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Always predict the class most frequent in the training part (never the test part)."""
    return classification_metrics(y_test, *_majority_predictions(y_train, len(y_test)))


def majority_class(y_train: np.ndarray) -> int:
    """The class most frequent in `y_train` (ties go to the lower index: sell, hold, buy)."""
    if len(y_train) == 0:
        raise ValueError("no training labels to take the majority class from")
    return int(np.bincount(y_train.astype(int), minlength=len(CLASSES)).argmax())


def _majority_predictions(y_train: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    prior = np.bincount(y_train.astype(int), minlength=len(CLASSES)) / len(y_train)
    return np.full(n, majority_class(y_train)), np.tile(prior, (n, 1))


def class_balance(y: np.ndarray) -> dict[str, float]:
    counts = np.bincount(y.astype(int), minlength=len(CLASSES))
    return {name: float(c / max(len(y), 1)) for name, c in zip(CLASSES, counts, strict=True)}


# --- regression -------------------------------------------------------------------------------
def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE, MAE, RMSE, R², IC (Pearson) and rank IC (Spearman, ties averaged).

    Inputs must be finite and of equal length (drop warm-up and unlabelled rows first).
    R² is NaN when `y_true` is constant; the ICs are NaN when either side is constant.
    """
    true = np.asarray(y_true, dtype="float64")
    pred = np.asarray(y_pred, dtype="float64")
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length; got {true.shape}, {pred.shape}"
        )
    if len(true) == 0:
        raise ValueError("no rows to score")
    bad = int((~np.isfinite(true)).sum() + (~np.isfinite(pred)).sum())
    if bad:
        raise ValueError(f"{bad} non-finite values in y_true/y_pred; drop unlabelled rows first")
    from scipy.stats import rankdata  # ~1 s to import: only when a regression is scored

    error = pred - true
    mse = float(np.mean(error**2))
    total = float(np.sum((true - true.mean()) ** 2))
    return {
        "mse": mse,
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(mse)),
        "r2": 1.0 - _ratio(float(np.sum(error**2)), total),
        "ic": _pearson(true, pred),
        "rank_ic": _pearson(rankdata(true), rankdata(pred)),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt(np.sum(da**2) * np.sum(db**2)))
    return _ratio(float(np.sum(da * db)), denominator)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is zero or not finite."""
    if denominator == 0.0 or not np.isfinite(denominator):
        return float("nan")
    return numerator / denominator


# --- trading ----------------------------------------------------------------------------------
def periods_per_year(unit: str) -> float:
    """Candles in a year of 24/7 trading: unit 1 → 525,600; 60 → 8,760; D → 365."""
    minutes = unit_minutes("D" if str(unit).upper() == "D" else str(unit))
    return MINUTES_PER_YEAR / minutes


def candle_returns(equity: np.ndarray, initial: float = 1.0) -> np.ndarray:
    """Per-candle simple returns of an equity curve; the first is against `initial`."""
    returns = np.empty(len(equity))
    if len(equity):
        returns[0] = equity[0] / initial - 1.0
        np.divide(equity[1:], equity[:-1], out=returns[1:])
        returns[1:] -= 1.0
    return returns


def sharpe_ratio(returns: np.ndarray, per_year: float) -> float:
    """Annualised Sharpe of per-candle returns, risk-free 0; NaN for constant returns."""
    if len(returns) < 2:
        return float("nan")
    mean, std = float(np.mean(returns)), float(np.std(returns, ddof=1))
    # Constant returns leave rounding noise in the std (1e-17), not a real risk.
    if std <= 1e-12 * abs(mean):
        return float("nan")
    return _ratio(mean, std) * float(np.sqrt(per_year))


def sortino_ratio(returns: np.ndarray, per_year: float) -> float:
    """Annualised Sortino: mean over the downside deviation (target 0, over all candles).

    NaN when no candle lost money (the downside deviation is zero).
    """
    if len(returns) == 0:
        return float("nan")
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
    return _ratio(float(np.mean(returns)), downside) * float(np.sqrt(per_year))


def cagr(total_return: float, candles: int, per_year: float) -> float:
    """Compound annual growth over `candles` candles; -1 when everything was lost."""
    if candles == 0:
        return float("nan")
    if total_return <= -1.0:
        return -1.0
    with np.errstate(over="ignore"):
        return float(np.expm1(np.log1p(total_return) * per_year / candles))


def max_drawdown(
    equity: np.ndarray, ts: np.ndarray | pd.DatetimeIndex | None = None, initial: float = 1.0
) -> tuple[float, int, pd.Timedelta | None]:
    """Deepest fall below the running peak, and the longest time spent under a peak.

    Returns (depth as a positive fraction of the peak, longest duration in candles, longest
    duration in wall time, or None without `ts`). A drawdown lasts from the candle of its
    peak to the first candle back at or above that peak (peak to recovery), or to the last
    candle if it never recovers. `initial` is a peak just before the first candle (a candle
    earlier in the count; in wall time measured from the first candle). The two durations
    are each the longest of their kind: gaps in Upbit candles can make them differ.
    """
    n = len(equity)
    if n == 0:
        return 0.0, 0, None if ts is None else pd.Timedelta(0)
    peak = np.maximum.accumulate(equity)
    peak[: np.searchsorted(peak, initial)] = initial  # peak is sorted: a prefix below `initial`
    depth = float(1.0 - np.min(equity / peak))
    # -1 is the virtual peak `initial`; n - 1 closes a drawdown still open at the end.
    at_peak = np.concatenate(([-1], np.flatnonzero(equity >= peak)))
    begin, finish = at_peak[:-1], at_peak[1:]
    recovered = finish - begin > 1
    begin, finish = begin[recovered], finish[recovered]
    if at_peak[-1] < n - 1:
        begin = np.append(begin, at_peak[-1])
        finish = np.append(finish, n - 1)
    if len(begin) == 0:
        return depth, 0, None if ts is None else pd.Timedelta(0)
    candles = int(np.max(finish - begin))
    if ts is None:
        return depth, candles, None
    stamps = pd.DatetimeIndex(ts)
    return depth, candles, pd.Timedelta((stamps[finish] - stamps[np.maximum(begin, 0)]).max())


def trading_metrics(
    equity: pd.Series | np.ndarray,
    unit: str,
    *,
    positions: np.ndarray | None = None,
    trade_returns: np.ndarray | None = None,
    trade_pnl: np.ndarray | None = None,
    ts: np.ndarray | pd.DatetimeIndex | None = None,
    initial: float = 1.0,
) -> dict[str, MetricValue]:
    """Trading metrics of an equity curve marked to close, one value per candle.

    - `total_return`, `cagr`, `sharpe`, `sortino` (per-candle returns, risk-free 0),
      `calmar` (CAGR / max drawdown), annualised by wall time when `ts` is given (candles
      per year as observed: Upbit has no candle for a bucket without trades, so a quiet
      market has fewer than the unit's 24/7 count), else by the unit's 24/7 count.
    - `max_drawdown` (positive fraction), `max_drawdown_candles`, `max_drawdown_time`
      (pd.Timedelta, NaT without timestamps).
    - From `positions` (fraction of equity held at each close, 0 = flat, 1 = long):
      `exposure` (fraction of candles in position) and `turnover` (equity traded per year;
      an entry plus an exit of the whole equity count 2; a position still open after the
      last candle counts as closed, as the backtest sells it at the last close).
    - From the trades: `trades` (count), `win_rate` (return > 0; NaN without trades),
      `avg_trade_return`, `profit_factor` (gross profit / gross loss of `trade_pnl`, falling
      back to `trade_returns`; NaN without a losing trade).
    Metrics whose inputs are not given are NaN.
    """
    if isinstance(equity, pd.Series):
        if ts is None and isinstance(equity.index, pd.DatetimeIndex):
            ts = equity.index
        values = equity.to_numpy(dtype="float64")
    else:
        values = np.asarray(equity, dtype="float64")
    n = len(values)
    per_year = periods_per_year(unit)
    if ts is not None and n:
        stamps = pd.DatetimeIndex(ts)
        years = (stamps[-1] - stamps[0]).total_seconds() / 86400 / 365 + 1 / per_year
        per_year = n / years  # the last candle's bucket counts: n gapless candles give 24/7
    nan = float("nan")
    total = float(values[-1] / initial - 1.0) if n else nan
    returns = candle_returns(values, initial) if n else values
    growth = cagr(total, n, per_year)
    depth, dd_candles, dd_time = max_drawdown(values, ts, initial)
    out: dict[str, MetricValue] = {
        "total_return": total,
        "cagr": growth,
        "sharpe": sharpe_ratio(returns, per_year),
        "sortino": sortino_ratio(returns, per_year),
        "calmar": _ratio(growth, depth),
        "max_drawdown": depth,
        "max_drawdown_candles": float(dd_candles),
        "max_drawdown_time": dd_time if dd_time is not None else pd.NaT,
    }
    if positions is not None and n:
        held = np.asarray(positions)  # int8 positions stay int8: 8x less memory traffic
        traded = float(np.abs(np.diff(held, prepend=0, append=0)).sum())
        out["exposure"] = float(np.count_nonzero(held) / n)
        out["turnover"] = traded * per_year / n
    else:
        out["exposure"] = out["turnover"] = nan
    out.update(trade_metrics(trade_returns, trade_pnl))
    return out


def trade_metrics(
    trade_returns: np.ndarray | None, trade_pnl: np.ndarray | None = None
) -> dict[str, float]:
    """`trades`, `win_rate`, `avg_trade_return`, `profit_factor` of a trade list."""
    nan = float("nan")
    if trade_returns is None:
        return {"trades": nan, "win_rate": nan, "avg_trade_return": nan, "profit_factor": nan}
    returns = np.asarray(trade_returns, dtype="float64")
    pnl = returns if trade_pnl is None else np.asarray(trade_pnl, dtype="float64")
    if len(returns) == 0:
        return {"trades": 0.0, "win_rate": nan, "avg_trade_return": nan, "profit_factor": nan}
    gross_loss = float(-pnl[pnl < 0].sum())
    return {
        "trades": float(len(returns)),
        "win_rate": float(np.mean(returns > 0)),
        "avg_trade_return": float(np.mean(returns)),
        "profit_factor": _ratio(float(pnl[pnl > 0].sum()), gross_loss),
    }
