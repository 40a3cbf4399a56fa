"""Every feature kind TA-Lib defines, checked against TA-Lib on real candles.

Two series: 20,000 KRW-BTC minutes, and 20,000 KRW-ETH minutes scaled down to ~1 KRW and
rounded to a 0.001 KRW tick (volume scaled up, value kept), so typical prices repeat and
candles go flat as on a low-priced coin. Values are compared where both sides are defined
and ours is kept (after each side's warm-up and our memory mask). Where our definition
deliberately differs from TA-Lib's, the test holds the documented relation instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.research.features import DEFAULT_SPEC, FeatureSpec, agree, compute_features
from tests.conftest import shared_candles

talib = pytest.importorskip("talib")

SPEC = FeatureSpec(
    features=(
        *DEFAULT_SPEC.features,
        {"kind": "return", "lags": [1, 7]},
        {"kind": "roc", "length": 10},
    )
)
ROWS = 20_000


def _cheap_eth() -> pd.DataFrame:
    candles = shared_candles("KRW-ETH_1m.csv", ROWS, market="KRW-ETH")
    scale = 4_000_000.0
    for col in ("open", "high", "low", "close"):
        candles[col] = np.round(candles[col] / scale, 3)
    candles["volume"] = candles["volume"] * scale
    return candles


@pytest.fixture(scope="module", params=["btc", "cheap_eth"])
def series(request: pytest.FixtureRequest) -> tuple[pd.DataFrame, pd.DataFrame]:
    if request.param == "btc":
        candles = shared_candles("KRW-BTC_1m.csv", ROWS)
    else:
        candles = _cheap_eth()
    candles = candles.reset_index(drop=True)
    return candles, compute_features(candles, SPEC).reset_index(drop=True)


def _hlcv(candles: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(candles[c].to_numpy(np.float64) for c in ("high", "low", "close", "volume"))


def _check(ours: pd.Series, theirs: np.ndarray, tol: float, floor: float = 0.0) -> None:
    """Equal to `tol` relative to max(|theirs|, floor) wherever both are defined; and both
    must be defined on at least 90 % of the rows (a test that compares nothing fails)."""
    a = ours.to_numpy()
    both = np.isfinite(a) & np.isfinite(theirs)
    assert both.mean() > 0.9, f"{ours.name}: only {both.sum()} comparable rows"
    ok = agree(a[both], theirs[both], floor, tol)
    worst = np.abs(a[both] - theirs[both])[~ok]
    assert ok.all(), f"{ours.name}: {(~ok).sum()} rows differ, worst by {worst.max():.3g}"


def test_moving_averages_and_rates_of_change(series: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candles, ours = series
    _, _, close, _ = _hlcv(candles)
    # the averages themselves (a ratio near 0 would hold TA-Lib's running sum to 1e-15)
    for n in (10, 30):
        _check(close / (1.0 + ours[f"sma_ratio_{n}"]), talib.SMA(close, n), 1e-12)
    # pandas-ta's EMA is SMA-seeded as TA-Lib's is; the memory mask hides any seed difference
    _check(close / (1.0 + ours["ema_ratio_20"]), talib.EMA(close, 20), 1e-9)
    _check(ours["roc_10"], talib.ROC(close, 10) / 100.0, 1e-9, 1e-6)
    for lag in (1, 7):
        _check(ours[f"ret_{lag}"], talib.ROCR(close, lag) - 1.0, 1e-9, 1e-6)
    for lag in (1, 30):
        _check(ours[f"logret_{lag}"], np.log(talib.ROCR(close, lag)), 1e-9, 1e-6)


def _talib_mfi(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """TA-Lib's MFI / 100, with our 0.5 where the window had no flow either way."""
    tp = (high + low + close) / 3.0
    moved = np.r_[np.nan, (np.diff(tp) != 0.0).astype(np.float64)]
    still = talib.SUM(moved, 14) == 0.0
    return np.where(still, 0.5, talib.MFI(high, low, close, volume, 14) / 100.0)


def test_macd_rsi_atr_adx_after_their_memory(series: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Recursive indicators: TA-Lib seeds them elsewhere (MACD's fast EMA from the slow one's
    start, Wilder sums instead of averages), which our memory mask has forgotten (1e-9)."""
    candles, ours = series
    high, low, close, _ = _hlcv(candles)
    line, _, hist = talib.MACD(close, 12, 26, 9)
    floor = float(np.nanmedian(np.abs(ours["macd_12_26_9"])))
    _check(ours["macd_12_26_9"], line / close, 1e-7, floor)
    _check(ours["macd_hist_12_26_9"], hist / close, 1e-7, floor)
    _check(ours["rsi_14"], talib.RSI(close, 14) / 100.0, 1e-8)
    _check(ours["atr_14"], talib.ATR(high, low, close, 14) / close, 1e-8)
    _check(ours["adx_14"], talib.ADX(high, low, close, 14) / 100.0, 1e-7)
    di = (talib.PLUS_DI(high, low, close, 14) - talib.MINUS_DI(high, low, close, 14)) / 100.0
    _check(ours["di_diff_14"], di, 1e-7, 1e-2)


def test_bollinger_uses_the_sample_std_where_talib_uses_the_population_one(
    series: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    """Ours (pandas-ta's definition): bands at 2 sample std (ddof=1); TA-Lib's at 2 population
    std, so TA-Lib with nbdev 2 * sqrt(n / (n - 1)) draws our bands."""
    candles, ours = series
    _, _, close, _ = _hlcv(candles)
    k = 2.0 * np.sqrt(20 / 19)
    upper, middle, lower = talib.BBANDS(close, 20, k, k)
    width = upper - lower
    flat = width == 0.0  # ours puts close mid-band there, TA-Lib's %B is undefined
    pct = np.where(flat, 0.5, (close - lower) / np.where(flat, 1.0, width))
    _check(ours["bb_pct_20"], pct, 1e-6, 0.1)
    _check(ours["bb_width_20"], width / middle, 1e-6)


def test_stochastic_except_that_a_flat_window_is_mid_range(
    series: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    """TA-Lib's fast %K is 0 over a window without range; ours is 0.5 (close is mid-range,
    neither high nor low). Rows whose smoothing touches no flat window agree to 1e-9; the
    rest hold the relation through TA-Lib's fast %K with flat windows set to 50."""
    candles, ours = series
    high, low, close, _ = _hlcv(candles)
    slow_k, slow_d = talib.STOCH(high, low, close, 14, 3, 0, 3, 0)
    span = talib.MAX(high, 14) - talib.MIN(low, 14)
    fast_k = np.where(span == 0.0, 50.0, 100.0 * (close - talib.MIN(low, 14)) / span)
    fast_k[np.isnan(span)] = np.nan
    _check(ours["stoch_k_14"], talib.SMA(fast_k, 3) / 100.0, 1e-9, 0.1)
    _check(ours["stoch_d_14"], talib.SMA(talib.SMA(fast_k, 3), 3) / 100.0, 1e-9, 0.1)
    clean = talib.MAX((span == 0.0).astype(np.float64), 5) == 0.0
    _check(ours["stoch_k_14"].where(clean), np.where(clean, slow_k / 100.0, np.nan), 1e-9, 0.1)
    _check(ours["stoch_d_14"].where(clean), np.where(clean, slow_d / 100.0, np.nan), 1e-9, 0.1)


def test_volume_flows_mfi_obv_and_cci(series: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """MFI (spec version >= 3) counts a repeated typical price as neither flow, as TA-Lib does.
    A window without flow (typical price flat for 15 candles) is 0.5 in ours, 0 in TA-Lib's
    (it returns 0 whenever the window's total flow is under 1 KRW; none is, otherwise)."""
    candles, ours = series
    high, low, close, volume = _hlcv(candles)
    _check(ours["mfi_14"], _talib_mfi(high, low, close, volume), 1e-9, 0.1)
    obv = talib.OBV(close, volume)
    flow = (obv - np.roll(obv, 20)) / talib.SUM(volume, 20)
    flow[:20] = np.nan
    _check(ours["obv_flow_20"], flow, 1e-9, 0.1)
    # a window of typical prices equal but for float rounding: TA-Lib's CCI treats the tiny
    # mean deviation as zero (0), ours divides by it; only such rows are left out
    tp = (high + low + close) / 3.0
    flat = talib.MAX(tp, 20) - talib.MIN(tp, 20) <= 1e-12 * tp
    cci = np.where(flat, np.nan, talib.CCI(high, low, close, 20) / 100.0)
    _check(ours["cci_20"], cci, 1e-8, 0.5)


def test_specs_before_version_3_keep_pandas_ta_mfi_which_ties_make_differ() -> None:
    """Ties are what moved MFI: the old definition still holds for stored specs, and on the
    cheap coin it differs from TA-Lib on many rows."""
    candles = _cheap_eth()
    old = FeatureSpec(features=({"kind": "mfi", "length": 14},), version=2)
    new = FeatureSpec(features=({"kind": "mfi", "length": 14},))
    assert old.hash() != new.hash()
    high, low, close, volume = _hlcv(candles)
    theirs = _talib_mfi(high, low, close, volume)
    before = compute_features(candles, old)["mfi_14"].to_numpy()
    after = compute_features(candles, new)["mfi_14"].to_numpy()
    both = np.isfinite(before) & np.isfinite(theirs)
    assert (np.abs(before[both] - theirs[both]) > 1e-3).mean() > 0.1
    np.testing.assert_allclose(after[both], theirs[both], rtol=1e-9, atol=1e-12)
