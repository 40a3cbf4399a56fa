"""Features, labels and splits on real candles: nothing may see the future."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pandas_ta as ta
import pyarrow.parquet as pq
import pytest
import typer

from engine.research.dataset import build_dataset, split_dataset
from engine.research.features import (
    DEFAULT_SPEC,
    FEATURE_KINDS,
    FeatureSpec,
    OutlierRule,
    agree,
    column_floors,
    compute_features,
    compute_latest,
    load_feature_spec,
    outlier_mask,
)
from engine.research.labels import (
    BUY,
    HOLD,
    SELL,
    LabelSpec,
    forward_return,
    label_balance,
    make_label_frame,
    make_labels,
    trailing_volatility,
)
from engine.research.splits import SplitSpec, WalkForwardSpec, chronological_split, walk_forward
from tests.conftest import shared_candles


def test_feature_spec_round_trips_and_hash_is_stable() -> None:
    again = FeatureSpec.from_dict(DEFAULT_SPEC.to_dict())
    assert again == DEFAULT_SPEC
    assert again.hash() == DEFAULT_SPEC.hash()
    changed = FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), "talib": True})
    assert changed.hash() != DEFAULT_SPEC.hash()
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        FeatureSpec.from_dict({"features": [{"kind": "nope"}]})


def test_a_spec_pinned_to_talib_refuses_to_run_without_it(
    btc_1m: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pandas_ta.maps import Imports

    # TA-Lib is a dev dependency (reference tests): hide it as on a machine without it
    monkeypatch.setitem(Imports, "talib", False)
    pinned = FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), "talib": True})
    for compute in (compute_features, compute_latest):
        with pytest.raises(ValueError, match="pins talib=true but TA-Lib is not importable"):
            compute(btc_1m.head(800), pinned)


def test_features_are_scale_free_and_defined_after_warmup(btc_1m: pd.DataFrame) -> None:
    features = compute_features(btc_1m.head(1000))
    warm = DEFAULT_SPEC.warmup()
    assert features.iloc[warm:].notna().all().all()
    assert features.iloc[: warm - 1].isna().any(axis=1).all()
    scaled = btc_1m.head(1000).copy()
    scaled[["open", "high", "low", "close"]] *= 1024.0  # exact, so ADX's ties stay ties
    pd.testing.assert_frame_equal(compute_features(scaled), features, rtol=1e-6, atol=1e-9)


def test_changing_candles_after_t_changes_no_feature_at_or_before_t(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(1500).reset_index(drop=True)
    t = 1000
    before = compute_features(candles)
    future = candles.copy()
    rng = np.random.default_rng(0)
    future.loc[t + 1 :, ["open", "high", "low", "close"]] *= rng.uniform(
        0.8, 1.2, (len(future) - t - 1, 1)
    )
    future.loc[t + 1 :, "volume"] *= 7.0
    after = compute_features(future)
    pd.testing.assert_frame_equal(before.iloc[: t + 1], after.iloc[: t + 1])
    assert not before.iloc[t + 1 :].equals(after.iloc[t + 1 :])  # the perturbation did bite


def test_labels_use_only_later_candles_and_the_last_horizon_rows_have_none(
    btc_1m: pd.DataFrame,
) -> None:
    candles = btc_1m.head(300)
    spec = LabelSpec(horizon=5, threshold=0.001)
    labels = make_labels(candles, spec)
    assert labels.iloc[-5:].isna().all()
    assert labels.iloc[:-5].notna().all()
    close = candles["close"].to_numpy()
    fwd = np.log(close[5:] / close[:-5])
    expected = np.where(fwd > 0.001, BUY, np.where(fwd < -0.001, SELL, HOLD))
    np.testing.assert_array_equal(labels.iloc[:-5].to_numpy(), expected)
    changed = candles.copy()
    changed.loc[changed.index[:100], "close"] *= 2  # the past does not move a label at t >= 100
    np.testing.assert_array_equal(make_labels(changed, spec).iloc[100:-5], labels.iloc[100:-5])


def test_split_is_chronological_and_purged() -> None:
    split = chronological_split(1000, SplitSpec(train=0.7, validation=0.15), horizon=10)
    assert split.train[-1] + 10 < split.validation[0]
    assert split.validation[-1] + 10 < split.test[0]
    assert split.train[-1] == 689 and split.validation[0] == 700 and split.test[0] == 850
    with pytest.raises(ValueError, match="too few"):
        chronological_split(20, SplitSpec(), horizon=10)


def test_dataset_drops_warmup_and_unlabelled_rows_without_filling(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(800)
    data = build_dataset(candles, DEFAULT_SPEC, LabelSpec(horizon=10))
    assert np.isfinite(data.X).all()
    assert data.ts[0] == candles["ts"].iloc[DEFAULT_SPEC.warmup()]
    assert data.ts[-1] == candles["ts"].iloc[-11]


# --- feature spec -----------------------------------------------------------------------------
EVERY_KIND = FeatureSpec(
    features=(
        *DEFAULT_SPEC.features,
        {"kind": "return", "lags": [1, 7]},
        {"kind": "value", "length": 15},
        {"kind": "ema_ratio", "lengths": [9, 50]},
        {"kind": "roc", "length": 12},
        {"kind": "return_stats", "length": 15, "stats": ["mean", "std", "skew", "z"]},
        {"kind": "lag", "of": ["adx_14", "bb_pct_20"], "lags": [2]},
        {"kind": "calendar", "cyclic": False, "raw": True},
    )
)


@pytest.fixture(scope="module")
def btc_valued() -> pd.DataFrame:
    """3000 real KRW-BTC minutes with a known KRW value, so every kind can run."""
    candles = shared_candles("KRW-BTC_1m.csv", 3000)
    candles["value"] = candles["close"] * candles["volume"] * 1.0002
    return candles


def test_feature_specs_are_normalised_validated_and_backward_compatible() -> None:
    short = FeatureSpec(features=({"kind": "rsi"}, {"kind": "lag", "of": ["rsi_14"]}))
    spelled = FeatureSpec(
        features=({"kind": "rsi", "length": 14}, {"kind": "lag", "of": ["rsi_14"], "lags": [1]})
    )
    assert short == spelled and short.hash() == spelled.hash()
    assert short.columns() == ["rsi_14", "rsi_14_lag1"]
    assert 30 <= len(DEFAULT_SPEC.columns()) <= 40
    for bad, message in [
        ({"kind": "rsi", "lenght": 3}, "unknown parameters \\['lenght'\\]"),
        ({"kind": "lag", "of": ["nope"]}, "lag refers to \\['nope'\\]"),
        ({"kind": "lag"}, "needs parameters \\['of'\\]"),
        ({"kind": "macd", "fast": 30, "slow": 10, "signal": 9}, "fast \\(30\\) must be shorter"),
        ({"kind": "sma_ratio", "lengths": [0]}, "positive integers"),
        ({"kind": "return_stats", "stats": ["kurt"]}, "unknown stats"),
    ]:
        with pytest.raises(ValueError, match=message):
            FeatureSpec(features=(bad,))
    with pytest.raises(ValueError, match="repeats columns"):
        FeatureSpec(features=({"kind": "rsi"}, {"kind": "rsi"}))
    assert pickle.loads(pickle.dumps(DEFAULT_SPEC)) == DEFAULT_SPEC
    # a spec stored before max_gap existed keeps bridging gaps, as it did when trained
    old = FeatureSpec.from_dict({"version": 1, "talib": False, "features": [{"kind": "rsi"}]})
    assert old.max_gap is None and old.version == 1
    written = FeatureSpec.from_dict({"features": [{"kind": "rsi"}]})  # a hand-written file
    assert written.max_gap == DEFAULT_SPEC.max_gap and written.version == DEFAULT_SPEC.version


def test_feature_spec_files_load_with_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(DEFAULT_SPEC.to_dict()))
    assert load_feature_spec(path) == DEFAULT_SPEC
    with pytest.raises(ValueError, match="does not exist"):
        load_feature_spec(tmp_path / "missing.json")
    path.write_text("{'features': ")
    with pytest.raises(ValueError, match="not valid JSON.*line 1"):
        load_feature_spec(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object with 'features'"):
        load_feature_spec(path)


def test_every_column_is_kept_exactly_from_its_warmup_and_memory(btc_valued: pd.DataFrame) -> None:
    """A column is NaN until it is defined (warm-up) and no longer moved by where the history
    starts (memory - 1 rows): recursive indicators keep only their converged rows."""
    features = compute_features(btc_valued, EVERY_KIND)
    for col, (warmup, memory) in EVERY_KIND.column_info().items():
        first = max(warmup, memory - 1)
        defined = features[col].notna().to_numpy()
        assert not defined[:first].any() and defined[first:].all(), col
        assert memory > warmup, col
    assert EVERY_KIND.warmup() == max(max(w, m - 1) for w, m in EVERY_KIND.column_info().values())
    assert {f["kind"] for f in EVERY_KIND.features} == set(FEATURE_KINDS)


def test_every_kind_is_scale_free(btc_valued: pd.DataFrame) -> None:
    features = compute_features(btc_valued, EVERY_KIND)
    scaled = btc_valued.copy()
    # powers of two scale exactly: +DM/-DM ties between tick-sized moves stay ties
    scaled[["open", "high", "low", "close"]] *= 2.0**-14  # a coin near 10 KRW
    scaled["volume"] *= 8.0
    scaled["value"] *= 2.0**-11
    pd.testing.assert_frame_equal(
        compute_features(scaled, EVERY_KIND), features, rtol=1e-6, atol=1e-9
    )


def test_indicators_match_pandas_ta_where_we_compute_them_ourselves(
    btc_valued: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pandas_ta.maps import Imports

    # pandas-ta's native references: its stoch smooths with TA-Lib's SMA whenever TA-Lib is
    # importable (a dev dependency now), whatever talib= says
    monkeypatch.setitem(Imports, "talib", False)
    candles = btc_valued.reset_index(drop=True)
    high, low, close = candles["high"], candles["low"], candles["close"]
    ours = compute_features(candles, EVERY_KIND)
    ours = ours.reset_index(drop=True)
    v2 = compute_features(candles, dataclasses.replace(EVERY_KIND, version=2))
    v2 = v2.reset_index(drop=True)

    def where_ours(col: str, theirs: pd.Series) -> np.ndarray:  # ours hides the warm-up
        return np.where(ours[col].isna(), np.nan, theirs.to_numpy())

    adx = ta.adx(high, low, close, length=14, talib=False)  # ours skips its per-row apply
    np.testing.assert_allclose(
        ours["adx_14"] * 100, where_ours("adx_14", adx["ADX_14"]), rtol=1e-12
    )
    np.testing.assert_allclose(
        ours["di_diff_14"] * 100,
        where_ours("di_diff_14", adx["DMP_14"] - adx["DMN_14"]),
        rtol=1e-9,
        atol=1e-12,
    )
    stoch = ta.stoch(high, low, close, k=14, d=3, smooth_k=3, talib=False)
    for col, theirs in (("stoch_k_14", "STOCHk_14_3_3"), ("stoch_d_14", "STOCHd_14_3_3")):
        np.testing.assert_allclose(ours[col] * 100, where_ours(col, stoch[theirs]), rtol=1e-9)
    bands = ta.bbands(close, length=20, lower_std=2.0, upper_std=2.0, talib=False)
    np.testing.assert_allclose(
        ours["bb_pct_20"], where_ours("bb_pct_20", bands["BBP_20_2.0_2.0"]), rtol=1e-7
    )
    np.testing.assert_allclose(
        ours["bb_width_20"] * 100, where_ours("bb_width_20", bands["BBB_20_2.0_2.0"]), rtol=1e-7
    )
    # CCI by its textbook definition (pandas-ta 0.4.71b0 divides before subtracting)
    tp = (high + low + close) / 3
    mad = tp.rolling(20).apply(lambda w: np.abs(w - w.mean()).mean(), raw=True)
    np.testing.assert_allclose(
        ours["cci_20"] * 100, (tp - tp.rolling(20).mean()) / (0.015 * mad), rtol=1e-8
    )
    for col, theirs, scale in (
        ("rsi_14", ta.rsi(close, length=14, talib=False), 100),
        # specs before version 3 keep pandas-ta's native MFI (test_feature_reference: v3)
        ("mfi_14", ta.mfi(high, low, close, candles["volume"], length=14, talib=False), 100),
        # ours: pandas-ta's true range without its epsilon, then its SMA seed and ta.rma
        ("atr_14", ta.atr(high, low, close, length=14, talib=False) / close, 1),
        ("sma_ratio_30", close / ta.sma(close, length=30, talib=False) - 1, 1),
    ):  # else straight from pandas-ta: only the scaling and the warm-up mask are ours
        mine = ours if col != "mfi_14" else v2
        np.testing.assert_allclose(mine[col] * scale, where_ours(col, theirs), rtol=1e-12)


def test_pandas_ta_epsilon_would_leak_the_future_into_a_cheap_coins_stochastic(
    btc_valued: pd.DataFrame,
) -> None:
    """pandas-ta's non_zero_range adds epsilon to every row once any row has a zero range;
    on a coin priced near 1 KRW that moves values at rows before that row. Ours does not."""
    cheap = btc_valued.reset_index(drop=True).copy()
    cheap[["open", "high", "low", "close"]] *= 1e-8
    flat = cheap.copy()
    flat.loc[2500:2530, ["open", "high", "low", "close"]] = flat.loc[2500, "close"]

    def theirs(c: pd.DataFrame) -> pd.Series:
        return ta.stoch(c["high"], c["low"], c["close"], talib=False)["STOCHk_14_3_3"]

    assert not theirs(cheap).iloc[:2400].equals(theirs(flat).iloc[:2400])
    pd.testing.assert_frame_equal(
        compute_features(cheap).iloc[:2400], compute_features(flat).iloc[:2400], check_exact=True
    )


def test_compute_latest_equals_the_batch_row_for_every_kind(btc_valued: pd.DataFrame) -> None:
    full = compute_features(btc_valued, EVERY_KIND)
    floors = column_floors(full)
    rng = np.random.default_rng(0)
    for length in (1, 2, 15, 34, 60, 61, 200, EVERY_KIND.window()):
        for end in rng.integers(length, len(btc_valued), 8):
            window = btc_valued.iloc[end - length : end]
            latest = compute_latest(window, EVERY_KIND)
            batch = compute_features(window, EVERY_KIND).iloc[-1]
            assert list(latest.index) == list(batch.index) and latest.name == batch.name
            ok = agree(latest.to_numpy(), batch.to_numpy(), floors, 1e-9)
            assert ok.all(), (length, end, list(batch.index[~ok]))


def test_long_gaps_break_windows_and_short_ones_are_bridged() -> None:
    hourly = shared_candles("KRW-ETH_60m.csv", market="KRW-ETH", unit="60")
    features = compute_features(hourly)
    steps = hourly["ts"].diff().to_numpy() / pd.Timedelta(hours=1)
    breaks = np.flatnonzero(steps > DEFAULT_SPEC.max_gap)
    bridged = np.flatnonzero((steps > 1) & (steps <= DEFAULT_SPEC.max_gap))
    assert len(breaks) == 3 and len(bridged) > 5
    for b in bridged[bridged > 1000][:5]:
        assert features.iloc[b - 600 if b > 600 else 0 : b + 1].iloc[-5:].notna().all().all()
    for b in breaks:
        segment = compute_features(hourly.iloc[b : b + 1000])  # the history after the break alone
        floors = column_floors(segment)
        for col, (_, memory) in DEFAULT_SPEC.column_info().items():
            assert features[col].iloc[b : b + memory - 1].isna().all(), col
            kept = features[col].iloc[b + memory - 1 : b + 1000].to_numpy()
            alone = segment[col].iloc[memory - 1 :].to_numpy()
            j = list(DEFAULT_SPEC.columns()).index(col)
            assert agree(kept, alone, floors[j], 1e-9).all(), col  # nothing from before the gap
    assert (
        compute_features(hourly, FeatureSpec(DEFAULT_SPEC.features, max_gap=None))
        .iloc[DEFAULT_SPEC.warmup() :]
        .notna()
        .all()
        .all()
    )


def test_compute_features_says_what_is_wrong_with_its_input(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(200)
    with pytest.raises(ValueError, match="no candles"):
        compute_features(candles.iloc[:0])
    with pytest.raises(ValueError, match="ascending"):
        compute_features(candles.iloc[::-1])
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_features(candles.assign(ts=candles["ts"].dt.tz_localize(None)))
    with pytest.raises(ValueError, match="pass unit="):
        compute_features(candles.drop(columns="unit"))
    pd.testing.assert_frame_equal(
        compute_features(candles.drop(columns="unit"), unit="1"), compute_features(candles)
    )
    with pytest.raises(ValueError, match="never estimated"):
        compute_features(candles, FeatureSpec(features=({"kind": "value"},)))


def test_outliers_are_flagged_from_the_past_and_can_be_dropped(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(4000).reset_index(drop=True)
    assert outlier_mask(candles).sum() <= 2  # real minutes are rarely that wild
    spiked = candles.copy()
    spiked.loc[3000, ["high", "close"]] *= 1.03  # a bad print, back the next minute
    flags = outlier_mask(spiked)
    assert flags.iloc[3000] and flags.iloc[3001] and flags.iloc[:3000].sum() <= 2
    later = spiked.copy()
    later.loc[3100:, ["open", "high", "low", "close"]] *= 3.0
    np.testing.assert_array_equal(outlier_mask(later).iloc[:3100], flags.iloc[:3100])
    kept = build_dataset(spiked, DEFAULT_SPEC, LabelSpec(), outliers=OutlierRule())
    every = build_dataset(spiked, DEFAULT_SPEC, LabelSpec())
    assert spiked["ts"].iloc[3000] in every.ts and spiked["ts"].iloc[3000] not in kept.ts
    assert kept.dropped["outlier"] >= 2 and len(every.y) - len(kept.y) == kept.dropped["outlier"]


# --- labels ----------------------------------------------------------------------------------
def _path(closes: list[float], highs: list[float], lows: list[float]) -> pd.DataFrame:
    n = len(closes)
    return pd.DataFrame(
        {
            "market": "KRW-BTC",
            "unit": "1",
            "ts": pd.date_range("2025-01-01", periods=n, freq="min", tz="UTC"),
            "open": closes,
            "high": highs,
            "low": lows,
            "close": closes,
            "volume": 1.0,
        }
    )


def test_triple_barrier_takes_the_first_barrier_and_the_stop_when_a_candle_hits_both() -> None:
    spec = LabelSpec(horizon=3, threshold=0.01, scheme="triple_barrier")  # barriers at +-1 %
    up = _path([100, 100, 100, 100, 100], [100, 100.5, 101.5, 100, 100], [100, 99.5, 99.5, 99, 99])
    down = _path([100, 100, 100, 100, 100], [100, 100.5, 100, 102, 100], [100, 99.5, 98.5, 99, 99])
    both = _path([100, 100, 100, 100, 100], [100, 101.5, 100, 100, 100], [100, 98.5, 100, 100, 100])
    flat = _path(
        [100, 100.2, 99.8, 100.1, 100], [100, 100.5, 100, 100.5, 100], [100, 99.5, 99.5, 99.5, 99.5]
    )
    for candles, label, barrier, touch in [
        (up, BUY, "upper", 2),
        (down, SELL, "lower", 2),
        (both, SELL, "lower", 1),
        (flat, HOLD, "time", 3),
    ]:
        frame = make_label_frame(candles, spec)
        assert frame["label"].iloc[0] == label and frame["barrier"].iloc[0] == barrier
        assert frame["touch"].iloc[0] == candles["ts"].iloc[touch]
        assert frame["end"].iloc[0] == candles["ts"].iloc[3]  # purge uses t + horizon
        assert frame["label"].iloc[-3:].isna().all()


def test_volatility_scaled_thresholds_come_from_the_past_and_keep_the_fee_floor(
    btc_1m: pd.DataFrame,
) -> None:
    candles = btc_1m.head(3000)
    spec = LabelSpec(horizon=10, threshold=0.001, vol_window=100, vol_multiple=2.0)
    labels = make_labels(candles, spec)
    assert labels.iloc[:100].isna().all() and labels.iloc[100:-10].notna().all()
    fwd = forward_return(candles.set_index("ts")["close"], 10).to_numpy()
    sigma = trailing_volatility(candles, 100)
    threshold = np.maximum(0.001, 2.0 * sigma * np.sqrt(10))
    log_close = np.log(candles["close"].to_numpy())
    r = np.diff(log_close)
    assert sigma[500] == pytest.approx(np.std(r[400:500], ddof=1), rel=1e-12)  # up to t only
    rows = np.arange(100, len(candles) - 10)
    expected = np.where(
        fwd[rows] > threshold[rows], BUY, np.where(fwd[rows] < -threshold[rows], SELL, HOLD)
    )
    np.testing.assert_array_equal(labels.to_numpy()[rows], expected)
    fixed = make_labels(candles, LabelSpec(horizon=10, threshold=0.001))
    assert label_balance(labels)["hold"] > label_balance(fixed)["hold"]  # 2 sigma is wider


def test_regression_labels_and_class_balance(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(1000)
    data = build_dataset(candles, DEFAULT_SPEC, LabelSpec(horizon=5, scheme="regression"))
    assert data.y.dtype == np.float64
    close = candles.set_index("ts")["close"]
    np.testing.assert_allclose(data.y, np.log(close.shift(-5) / close).loc[data.ts].to_numpy())
    balance = label_balance(make_labels(candles, LabelSpec(horizon=5)))
    assert sum(balance[c] for c in ("sell", "hold", "buy")) == pytest.approx(1.0)
    assert balance["rows"] == 995 and balance["unlabelled"] == 5


def test_label_specs_round_trip_and_reject_nonsense() -> None:
    spec = LabelSpec(horizon=20, scheme="triple_barrier", vol_window=50, take_profit=2.0)
    assert LabelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert LabelSpec.from_dict({"horizon": 10, "threshold": 0.001, "scheme": "fixed_horizon"})
    for bad, message in [
        ({"scheme": "nope"}, "unknown label scheme"),
        ({"vol_window": 1}, "vol_window"),
        ({"stop_loss": 0}, "stop_loss"),
        ({"horizon": 0}, "horizon"),
    ]:
        with pytest.raises(ValueError, match=message):
            LabelSpec(**bad)
    with pytest.raises(ValueError, match="unknown fields \\['thresh'\\]"):
        LabelSpec.from_dict({"thresh": 1})


def test_labels_whose_window_spans_a_long_gap_are_dropped() -> None:
    hourly = shared_candles("KRW-ETH_60m.csv", market="KRW-ETH", unit="60")
    frame = make_label_frame(hourly, LabelSpec(horizon=10))
    steps = hourly["ts"].diff().to_numpy() / pd.Timedelta(hours=1)
    for b in np.flatnonzero(steps > 5):
        assert frame["label"].iloc[b - 10 : b].isna().all()
        assert frame["label"].iloc[b : b + 5].notna().all()


# --- splits and scalers ----------------------------------------------------------------------
def test_purge_uses_label_end_times_when_rows_are_not_contiguous() -> None:
    # 100 dataset rows of a minute series with a 30-minute hole after row 59; labels look
    # 10 minutes ahead, so the hole means fewer rows need purging before it
    minutes = np.concatenate([np.arange(60), np.arange(90, 130)])
    ts = pd.DatetimeIndex(pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(minutes, "min"))
    end = ts + pd.Timedelta(minutes=10)
    split = chronological_split(100, SplitSpec(train=0.6, validation=0.2), ts=ts, label_end=end)
    assert split.train[-1] == 59  # the hole after row 59 keeps its label out of validation
    assert end[split.validation[-1]] < ts[split.test[0]] <= end[split.validation[-1] + 1]
    by_rows = chronological_split(100, SplitSpec(train=0.6, validation=0.2), horizon=10)
    assert by_rows.train[-1] == 49
    embargoed = chronological_split(
        100, SplitSpec(train=0.6, validation=0.2, embargo=3), ts=ts, label_end=end
    )
    assert embargoed.validation[0] == 63 and embargoed.test[0] == 83
    with pytest.raises(ValueError, match="label end"):
        chronological_split(100, SplitSpec(), ts=ts, label_end=ts - pd.Timedelta(minutes=1))


@pytest.mark.parametrize("mode", ["expanding", "sliding"])
def test_walk_forward_folds_are_purged_embargoed_and_move_forward(mode: str) -> None:
    n, h = 1200, 10
    ts = pd.date_range("2025-01-01", periods=n, freq="min", tz="UTC")
    spec = WalkForwardSpec(folds=4, mode=mode, embargo=5, validation=0.2)
    folds = list(walk_forward(n, spec, ts=ts, label_end=ts + pd.Timedelta(minutes=h)))
    assert [f.index for f in folds] == [0, 1, 2, 3]
    block = n // 5
    for k, fold in enumerate(folds):
        assert fold.test[0] == n - (4 - k) * block + 5  # embargo after the boundary
        assert fold.test[-1] == (n - 1 if k == 3 else n - (3 - k) * block - 1)
        assert fold.train[-1] + h < fold.validation[0] and fold.validation[-1] + h < fold.test[0]
        assert fold.validation[0] - fold.train[-1] > 5
        first_test = n - 4 * block  # the sliding window keeps that many rows by default
        start = fold.test[0] - 5 - first_test if mode == "sliding" else 0
        assert fold.train[0] == start
    assert all(a.test[0] < b.test[0] for a, b in itertools.pairwise(folds))
    with pytest.raises(ValueError, match="too few"):
        list(walk_forward(4, WalkForwardSpec(folds=5), horizon=1))
    with pytest.raises(ValueError, match="expanding or sliding"):
        WalkForwardSpec(mode="rolling")


def test_the_models_scaler_is_fitted_on_the_training_part_only(btc_1m: pd.DataFrame) -> None:
    from models import create_model
    from models.base import Standardizer

    data = build_dataset(btc_1m, DEFAULT_SPEC, LabelSpec())
    split = split_dataset(data, SplitSpec())
    model = create_model("lstm", window=4, hidden=4, layers=1, epochs=1, device="cpu")
    model.fit(data.X[split.train], data.y[split.train], data.X[split.validation], data.y[split.validation])
    scaler = model.scaler_
    np.testing.assert_allclose(scaler.mean_, data.X[split.train].astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(scaler.scale_, data.X[split.train].astype(np.float64).std(axis=0))
    train = scaler.transform(data.X[split.train])
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)
    test = scaler.transform(data.X[split.test])
    assert not np.allclose(test.mean(axis=0), 0, atol=1e-4)  # the test part was not looked at
    again = Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(again.transform(data.X[:5]), scaler.transform(data.X[:5]))
    constant = Standardizer().fit(np.ones((4, 2)))
    np.testing.assert_array_equal(constant.transform(np.ones((1, 2))), [[0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        Standardizer().fit(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="fitted on 39 columns"):
        scaler.transform(np.ones((2, 3)))


def test_dataset_reports_label_ends_and_dropped_rows(btc_1m: pd.DataFrame) -> None:
    data = build_dataset(btc_1m.head(800), DEFAULT_SPEC, LabelSpec(horizon=10))
    assert data.label_end is not None
    assert (data.label_end - data.ts == pd.Timedelta(minutes=10)).all()
    assert data.dropped == {"features undefined": DEFAULT_SPEC.warmup(), "unlabelled": 10}


# --- `upquant features build|list` -----------------------------------------------------------
def test_features_commands_build_a_parquet_file_and_list_warmups(
    home: Path, btc_1m: pd.DataFrame, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from store.candles import upsert_candles
    from store.db import connect
    from tui.cli.features import features_build, features_list

    app = typer.Typer()
    app.command("build")(features_build)
    app.command("list")(features_list)
    runner = CliRunner()
    out = tmp_path / "btc.parquet"
    empty = runner.invoke(app, ["build", "KRW-BTC", "--out", str(out)])
    assert isinstance(empty.exception, ValueError) and "no KRW-BTC unit 1 candles" in str(
        empty.exception
    )
    with connect() as con:
        upsert_candles(con, btc_1m.head(3000))
    built = runner.invoke(app, ["build", "KRW-BTC", "--unit", "1", "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert f"{3000 - DEFAULT_SPEC.warmup():,} rows x 39 features" in built.output
    table = pq.read_table(out)
    assert table.column_names == ["ts", *DEFAULT_SPEC.columns()]
    assert table.schema.metadata[b"upquant.feature_spec_hash"] == DEFAULT_SPEC.hash().encode()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"features": [{"kind": "rsi", "length": 7}]}))
    small = runner.invoke(
        app, ["build", "KRW-BTC", "--spec", str(spec), "--out", str(out), "--json"]
    )
    assert json.loads(small.output)["columns"] == 1
    wrong = runner.invoke(app, ["build", "KRW-BTC", "--out", str(tmp_path / "x.csv")])
    assert "must end in .parquet" in str(wrong.exception)

    listed = runner.invoke(app, ["list", "--market", "KRW-BTC", "--json"])
    report = json.loads(listed.output)
    assert {k["kind"] for k in report["kinds"]} == set(FEATURE_KINDS)
    rsi = next(c for c in report["columns"] if c["column"] == "rsi_14")
    assert rsi["warmup"] == 14 and rsi["measured"] <= rsi["memory"] <= report["spec"]["window"]
    plain = runner.invoke(app, ["list"])
    assert plain.exit_code == 0 and "adx_14" in plain.output and "memory" in plain.output
