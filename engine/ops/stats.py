"""The statistics a promotion rests on: per-candle losses, the Diebold–Mariano test of two
loss series, and the deflated Sharpe ratio of a challenger's trades. Pure functions of
arrays (no store, no engine); every degenerate input gives a stated result, never a NaN.

Conventions: losses are per candle (lower is better) and paired, champion and challenger
on the same candles; a loss differential is challenger minus champion, so a negative mean
favours the challenger. Sharpe ratios are per observation (per trade), never annualized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from models import CLASSES

EULER_GAMMA = 0.5772156649015329
PROBABILITY_FLOOR = 1e-12  # the clip research.metrics applies before its log-loss


# --- per-candle losses ------------------------------------------------------------------------
def log_loss_rows(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row log-loss of (n, 3) probabilities for CLASSES (sell, hold, buy) against class
    indices: -log p[label], with p clipped to [1e-12, 1]. Its mean is research.metrics'
    log_loss when every row sums to one."""
    proba = np.asarray(proba, dtype=np.float64)
    labels = _class_indices(labels, len(proba))
    if proba.ndim != 2 or proba.shape[1] != len(CLASSES):
        raise ValueError(f"probabilities must be (n, {len(CLASSES)}), got {proba.shape}")
    picked = proba[np.arange(len(labels)), labels]
    return -np.log(np.clip(picked, PROBABILITY_FLOOR, 1.0))


def zero_one_loss(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 where the predicted class index differs from the label, else 0.0."""
    labels = _class_indices(labels, len(labels))
    predicted = _class_indices(predicted, len(labels))
    return (predicted != labels).astype(np.float64)


def _class_indices(values: np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"class indices must be a 1-D array of {n}, got shape {array.shape}")
    if len(array) and (array.min() < 0 or array.max() >= len(CLASSES)):
        raise ValueError(f"class indices must lie in 0..{len(CLASSES) - 1}")
    return array.astype(np.int64)


# --- Diebold–Mariano ------------------------------------------------------------------------
@dataclass(frozen=True)
class DMResult:
    """A Diebold–Mariano test with the Harvey–Leybourne–Newbold correction.

    `statistic` is the corrected statistic (Student t with n-1 degrees of freedom under equal
    accuracy); negative favours the challenger. `note` is empty for a regular test and says
    why otherwise (too few candles, identical or constant differences)."""

    statistic: float
    p_value: float
    n: int
    mean_difference: float  # challenger loss minus champion loss, per candle
    horizon: int
    one_sided: bool
    note: str = ""


def diebold_mariano(
    champion_loss: np.ndarray,
    challenger_loss: np.ndarray,
    *,
    horizon: int = 1,
    one_sided: bool = False,
) -> DMResult:
    """Test equal expected loss of two forecasts over the same candles.

    `horizon` h: forecasts h candles ahead overlap, so the differential is MA(h-1); its long-run
    variance sums the autocovariances up to lag h-1 with rectangular weights (Diebold and
    Mariano 1995), falling back to Bartlett weights (Newey–West, never negative) when the
    rectangular sum is not positive. The statistic is multiplied by
    sqrt((n + 1 - 2h + h(h-1)/n) / n) and referred to Student t(n-1) (Harvey, Leybourne and
    Newbold 1997). `one_sided`: the alternative is "challenger loss lower" (p = P(T <= s));
    otherwise two-sided.
    """
    champion = np.asarray(champion_loss, dtype=np.float64)
    challenger = np.asarray(challenger_loss, dtype=np.float64)
    if champion.ndim != 1 or champion.shape != challenger.shape:
        raise ValueError(
            "losses must be two 1-D arrays over the same candles, got shapes "
            f"{champion.shape} and {challenger.shape}"
        )
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 candle, got {horizon}")
    if not (np.isfinite(champion).all() and np.isfinite(challenger).all()):
        raise ValueError("losses must be finite (clip probabilities before taking logs)")
    d = challenger - champion
    n = len(d)
    mean = float(d.mean()) if n else 0.0

    def result(statistic: float, p_value: float, note: str = "") -> DMResult:
        return DMResult(statistic, p_value, n, mean, horizon, one_sided, note)

    minimum = max(3, 2 * horizon + 1)  # keeps the correction's radicand and n-1 positive
    if n < minimum:
        return result(0.0, 1.0, f"too few candles: {n} < {minimum} for horizon {horizon}")
    # Subtraction rounds at about 1e-16 of the losses' size: differences that vary by less
    # than a billionth of it are constant, and the variance would be rounding noise.
    tolerance = 1e-9 * max(1.0, float(np.abs(champion).max()), float(np.abs(challenger).max()))
    if np.ptp(d) <= tolerance:
        if abs(mean) <= tolerance:
            return result(0.0, 1.0, "identical losses on every candle")
        # Zero variance and a nonzero mean: the difference is certain, in its direction.
        statistic = math.copysign(math.inf, mean)
        p_value = (0.0 if mean < 0 else 1.0) if one_sided else 0.0
        return result(statistic, p_value, "constant loss difference on every candle")
    centered = d - mean
    autocov = [float(centered[k:] @ centered[: n - k]) / n for k in range(horizon)]
    variance = autocov[0] + 2.0 * sum(autocov[1:])
    if variance <= 0.0:
        variance = autocov[0] + 2.0 * sum(
            (1.0 - k / horizon) * autocov[k] for k in range(1, horizon)
        )
    if variance <= 0.0:  # only when autocov[0] is 0 to rounding: the constant case above
        return result(0.0, 1.0, "loss difference without variance")
    dm = mean / math.sqrt(variance / n)
    correction = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    statistic = dm * correction
    if one_sided:
        p_value = float(student_t.cdf(statistic, n - 1))
    else:
        p_value = float(min(1.0, 2.0 * student_t.sf(abs(statistic), n - 1)))
    return result(statistic, p_value)


# --- deflated Sharpe ratio ------------------------------------------------------------------
@dataclass(frozen=True)
class DSRResult:
    """The deflated Sharpe ratio of one strategy's returns (Bailey and López de Prado 2014):
    `dsr` is the probability that its true Sharpe exceeds `benchmark`, the expected maximum
    Sharpe of `n_trials` zero-skill trials. `note` says why `dsr` is 0 when it cannot be
    estimated (too few returns, constant returns): no evidence is no promotion."""

    dsr: float
    sharpe: float  # per observation
    benchmark: float  # expected maximum Sharpe under the null, per observation
    n: int
    skew: float
    kurtosis: float  # not excess: 3 for a normal distribution
    n_trials: int
    trial_variance: float
    note: str = ""


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, n: int, skew: float = 0.0, kurtosis: float = 3.0
) -> float:
    """P(true Sharpe > benchmark) given an estimate from n returns with the given skew and
    (non-excess) kurtosis: Phi((SR - SR*) sqrt(n-1) / sqrt(1 - g3 SR + (g4-1)/4 SR^2))."""
    if n < 2:
        raise ValueError(f"a Sharpe ratio needs at least 2 returns, got {n}")
    # For sample moments g4 >= 1 + g3^2, so the radicand is a square (>= 0); the floor only
    # absorbs rounding and user-given moments that violate the inequality.
    radicand = max(1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2, 1e-12)
    return float(norm.cdf((sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(radicand)))


def expected_max_sharpe(n_trials: int, trial_variance: float) -> float:
    """E[max Sharpe] of n_trials independent zero-skill trials whose Sharpes vary with
    trial_variance (the False Strategy theorem): sqrt(V) ((1-g) Z^-1(1 - 1/N) +
    g Z^-1(1 - 1/(N e))), g the Euler–Mascheroni constant; 0 for a single trial."""
    if n_trials < 1:
        raise ValueError(f"at least one trial was made, got n_trials={n_trials}")
    if trial_variance < 0:
        raise ValueError(f"a variance is not negative, got {trial_variance}")
    if n_trials == 1:
        return 0.0  # nothing was selected
    quantiles = (1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials) + EULER_GAMMA * norm.ppf(
        1 - 1 / (n_trials * math.e)
    )
    return float(math.sqrt(trial_variance) * quantiles)


def deflated_sharpe_ratio(
    returns: np.ndarray, n_trials: int, trial_variance: float | None = None
) -> DSRResult:
    """The DSR of `returns` (per trade or per period) selected as the best of `n_trials`.

    `trial_variance`: the variance of the trials' Sharpe ratios; None takes the sampling
    variance of a zero-skill Sharpe over the same number of returns, 1/(n-1), which is what
    the trials' Sharpes vary by when none of them has skill."""
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise ValueError("returns must be a 1-D array of finite numbers")
    n = len(values)
    if n < 3:
        variance = trial_variance if trial_variance is not None else 0.0
        return DSRResult(
            0.0, 0.0, 0.0, n, 0.0, 3.0, n_trials, variance, f"too few returns: {n} < 3"
        )
    variance = trial_variance if trial_variance is not None else 1.0 / (n - 1)
    benchmark = expected_max_sharpe(n_trials, variance)
    std = float(values.std(ddof=1))
    if std == 0.0 or np.all(values == values[0]):
        note = "constant returns: the Sharpe ratio is undefined"
        return DSRResult(0.0, 0.0, benchmark, n, 0.0, 3.0, n_trials, variance, note)
    sharpe = float(values.mean()) / std
    centered = values - values.mean()
    m2 = float(np.mean(centered**2))
    skew = float(np.mean(centered**3)) / m2**1.5
    kurtosis = float(np.mean(centered**4)) / m2**2
    dsr = probabilistic_sharpe_ratio(sharpe, benchmark, n, skew, kurtosis)
    return DSRResult(dsr, sharpe, benchmark, n, skew, kurtosis, n_trials, variance)


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall of compounded equity from its running peak, as a positive fraction of the
    peak (0 when equity never falls; the start counts as a peak of 1)."""
    values = np.asarray(returns, dtype=np.float64)
    if len(values) == 0:
        return 0.0
    equity = np.concatenate(([1.0], np.cumprod(1.0 + values)))
    peak = np.maximum.accumulate(equity)
    return float(np.max(1.0 - equity / peak))
