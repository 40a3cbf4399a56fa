"""Proof that nothing sees the future, on the real candles in ../shared/data/upbit.

1. Changing candles after t changes no feature and no split membership at or before t.
2. Truncation: history cut before t agrees with the full history at t once each column's
   memory is covered (measured like freqtrade's recursive analysis and printed), so the
   live window reproduces training features; a future cut changes nothing at all.
3. A model trained on shuffled labels scores at chance on the purged test part (and the same
   harness does notice a leak when one is planted).
4. Labels at t use only candles t..t+horizon (plus the trailing volatility window when the
   threshold is volatility-scaled); the last `horizon` rows have no label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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
    recursive_warmup,
)
from engine.research.labels import BUY, LabelSpec, make_label_frame
from engine.research.metrics import classification_metrics, majority_baseline
from engine.research.splits import SplitSpec
from models import create_model
from tests.conftest import shared_candles

# every kind, non-default parameters where that makes a different code path
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

LABEL_SPECS = {
    "fixed": LabelSpec(horizon=10, threshold=0.001),
    "fixed-vol": LabelSpec(horizon=10, threshold=0.0005, vol_window=60, vol_multiple=0.5),
    "barrier": LabelSpec(horizon=15, threshold=0.002, scheme="triple_barrier"),
    "barrier-vol": LabelSpec(
        horizon=15,
        threshold=0.0,
        scheme="triple_barrier",
        vol_window=60,
        take_profit=1.0,
        stop_loss=0.7,
    ),
    "regression": LabelSpec(horizon=5, scheme="regression"),
}


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    """All KRW-BTC 1-minute candles, with a known KRW value so the `value` kind runs too."""
    candles = shared_candles("KRW-BTC_1m.csv")
    candles["value"] = candles["close"] * candles["volume"] * 1.0003
    return candles


@pytest.fixture(scope="module")
def eth_hourly() -> pd.DataFrame:
    """KRW-ETH 60-minute candles: 3.7 years, with exchange gaps of up to 6 hours."""
    return shared_candles("KRW-ETH_60m.csv", market="KRW-ETH", unit="60")


def _rewrite_future(
    candles: pd.DataFrame, t: int, seed: int, zero_volume: bool = True
) -> pd.DataFrame:
    """A wildly different future after row t: prices x0.5..2, volumes x0.01..10 (and some
    zero), flat candles and a flat stretch; timestamps, the only thing not a value, stay."""
    future = candles.copy()
    rng = np.random.default_rng(seed)
    rows = np.arange(t + 1, len(future))
    scale = rng.uniform(0.5, 2.0, len(rows))[:, None]
    future.loc[rows, ["open", "high", "low", "close"]] *= scale
    future.loc[rows, "volume"] *= rng.uniform(0.01, 10.0, len(rows))
    if zero_volume:
        future.loc[rows[::17], "volume"] = 0.0
    flat = rows[5:60]
    future.loc[flat, ["open", "high", "low", "close"]] = future.loc[flat[0], "close"]
    future["value"] = future["close"] * future["volume"] * rng.uniform(0.99, 1.01, len(future))
    future.loc[:t, "value"] = candles.loc[:t, "value"]
    return future


# --- 1. the future moves nothing at or before t ---------------------------------------------
@pytest.mark.parametrize("price", ["krw-btc", "near-1"])
@pytest.mark.parametrize("t", [700, 5_000, 8_471])
def test_changing_candles_after_t_changes_no_feature_at_or_before_t(
    btc: pd.DataFrame, t: int, price: str
) -> None:
    """At KRW-BTC's ~1e8 an epsilon added to every row vanishes in rounding; at ~1 KRW (the
    coins priced near 1) it shows, so both scales run. The near-1 history has no flat candle
    of its own (the rewrite adds some after t): pandas-ta adds epsilon to every true range,
    past ones too, once any candle is flat."""
    candles = btc.head(10_000).copy()
    if price == "near-1":
        candles[["open", "high", "low", "close"]] /= candles["close"].iloc[0]
        flat = candles["high"] == candles["low"]
        candles.loc[flat, "high"] *= 1.0001
    before = compute_features(candles, EVERY_KIND)
    after = compute_features(_rewrite_future(candles, t, seed=t), EVERY_KIND)
    pd.testing.assert_frame_equal(before.iloc[: t + 1], after.iloc[: t + 1], check_exact=True)
    changed = (before.iloc[t + 1 :] != after.iloc[t + 1 :]).any()
    calendar = {"day_sin", "day_cos", "week_sin", "week_cos", "hour", "weekday"}
    missed = [col for col in changed.index[~changed] if col not in calendar]
    assert not missed, f"the rewrite did not reach {missed}"


@pytest.mark.parametrize("labels", sorted(LABEL_SPECS))
def test_changing_candles_after_t_changes_no_split_membership_at_or_before_t(
    btc: pd.DataFrame, labels: str
) -> None:
    """Split fractions cut the candles, so a future whose candles are dropped as outliers
    (the rewrite's price jumps) moves no cut, though it changes how many rows there are."""
    candles = btc.head(8_000)
    spec = SplitSpec(train=0.6, validation=0.2, embargo=5)
    original = build_dataset(candles, DEFAULT_SPEC, LABEL_SPECS[labels], outliers=OutlierRule())
    parts = split_dataset(original, spec).part_of(len(original.y))
    for t in (4_700, 4_800, 6_350):  # around the train/validation and validation/test cuts
        future = _rewrite_future(candles, t, seed=t, zero_volume=False)
        rewritten = build_dataset(future, DEFAULT_SPEC, LABEL_SPECS[labels], outliers=OutlierRule())
        assert len(rewritten.y) != len(original.y)  # the future did drop or add rows
        cut = candles["ts"].iloc[t]
        upto = original.ts <= cut
        np.testing.assert_array_equal(rewritten.ts[rewritten.ts <= cut], original.ts[upto])
        again = split_dataset(rewritten, spec).part_of(len(rewritten.y))
        np.testing.assert_array_equal(again[: upto.sum()], parts[upto])
        np.testing.assert_array_equal(rewritten.X[: upto.sum()], original.X[upto])


# --- 2. truncation --------------------------------------------------------------------------
def test_features_on_history_up_to_t_equal_the_full_history_features(btc: pd.DataFrame) -> None:
    candles = btc.head(6_000)
    full = compute_features(candles, EVERY_KIND)
    for t in (0, 1, 59, 60, 481, 2_999, 5_998):
        cut = compute_features(candles.iloc[: t + 1], EVERY_KIND)
        pd.testing.assert_frame_equal(cut, full.iloc[: t + 1], check_exact=True)


def test_recursive_warmup_is_within_each_columns_memory_and_the_live_window(
    btc: pd.DataFrame, eth_hourly: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cut the history at 6 points of two real series; print what each column needed."""
    info = DEFAULT_SPEC.column_info()
    needs = {
        "KRW-BTC 1m": recursive_warmup(btc, DEFAULT_SPEC),
        "KRW-ETH 60m": recursive_warmup(eth_hourly, DEFAULT_SPEC),
    }
    lines = [
        (
            f"candles each default column needs to agree with full history to 1e-9"
            f" (live window {DEFAULT_SPEC.window()}):"
        ),
        f"  {'column':22} {'warm-up':>7} "
        + " ".join(f"{k:>12}" for k in needs)
        + f" {'memory':>7}",
    ]
    for col, (warmup, memory) in info.items():
        measured = [need[col] for need in needs.values()]
        assert max(measured) <= memory <= DEFAULT_SPEC.window(), (col, measured, memory)
        if memory == warmup + 1:
            assert measured == [memory] * len(measured), (col, measured)  # finite: exact
        lines.append(
            f"  {col:22} {warmup:7} " + " ".join(f"{m:12}" for m in measured) + f" {memory:7}"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_the_live_window_reproduces_full_history_features(
    btc: pd.DataFrame, eth_hourly: pd.DataFrame
) -> None:
    """What the live engine computes from `window()` trailing candles, by either path."""
    rng = np.random.default_rng(3)
    for candles, spec in ((btc, EVERY_KIND), (eth_hourly, DEFAULT_SPEC)):
        window = spec.window()
        full = compute_features(candles, spec)
        floors = column_floors(full)
        step = np.diff(candles["ts"].to_numpy()) / pd.Timedelta(minutes=int(candles["unit"][0]))
        breaks = np.flatnonzero(step > spec.max_gap) + 1
        near_breaks = [b + k for b in breaks for k in (0, 1, 20, 300, 400, 480, 481, 600)]
        for t in [*rng.integers(window, len(candles), 30), *near_breaks]:
            trailing = candles.iloc[max(t - window + 1, 0) : t + 1]
            batch = compute_features(trailing, spec).iloc[-1].to_numpy()
            latest = compute_latest(trailing, spec).to_numpy()
            reference = full.iloc[t].to_numpy()
            for name, got in (("compute_features", batch), ("compute_latest", latest)):
                ok = agree(got, reference, floors, 1e-9)
                assert ok.all(), (name, t, list(full.columns[~ok]))


# --- 3. shuffled labels score at chance -----------------------------------------------------
def test_a_model_on_shuffled_labels_scores_at_chance_on_the_purged_test_part(
    btc: pd.DataFrame,
) -> None:
    # a threshold that gives three classes of about a third each, so chance is ~1/3
    data = build_dataset(btc.head(20_000), DEFAULT_SPEC, LabelSpec(horizon=10, threshold=0.0003))
    split = split_dataset(data, SplitSpec(embargo=10))
    assert data.label_end[split.train].max() < data.ts[split.validation[0]]  # purged by time
    assert data.label_end[split.validation].max() < data.ts[split.test[0]]

    def test_scores(X: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        model = create_model("xgboost", n_estimators=40, n_jobs=1).fit(
            X[split.train], y[split.train], X[split.validation], y[split.validation]
        )
        proba = model.predict_proba(X[split.test])
        scored = classification_metrics(y[split.test], proba.argmax(1), proba)
        return scored, majority_baseline(y[split.train], y[split.test])

    shuffled = np.random.default_rng(1).permutation(data.y)
    scored, baseline = test_scores(data.X, shuffled)
    assert scored["accuracy"] <= baseline["accuracy"] + 0.02
    assert scored["log_loss"] >= baseline["log_loss"] - 0.01

    # the harness does see a leak: plant the label itself as a feature and it scores far above
    leaked = np.column_stack(
        [data.X, data.y + np.random.default_rng(2).normal(0, 0.3, len(data.y))]
    )
    scored, baseline = test_scores(leaked.astype(np.float32), data.y)
    assert scored["accuracy"] > baseline["accuracy"] + 0.2


# --- 4. labels use only the candles they say ------------------------------------------------
@pytest.mark.parametrize("name", sorted(LABEL_SPECS))
def test_labels_at_t_use_only_candles_t_to_t_plus_horizon(btc: pd.DataFrame, name: str) -> None:
    spec = LABEL_SPECS[name]
    candles = btc.head(3_000).reset_index(drop=True)
    h, back = spec.horizon, spec.lookback()
    frame = make_label_frame(candles, spec)
    labels = frame["label"].to_numpy()
    assert np.isnan(labels[-h:]).all() and frame["end"].iloc[-h:].isna().all()
    assert not np.isnan(labels[back:-h]).any()
    rows = np.flatnonzero(~np.isnan(labels))
    np.testing.assert_array_equal(
        frame["end"].to_numpy()[rows], candles["ts"].to_numpy()[rows + h]
    )  # end = t + horizon
    for t in (back + 400, 1_700, 2_500):
        # after t + horizon: nothing at or before t moves
        later = _rewrite_future(candles, t + h, seed=t)
        np.testing.assert_array_equal(
            make_label_frame(later, spec)["label"].to_numpy()[: t + 1], labels[: t + 1]
        )
        # before t - lookback: nothing at or after t moves
        earlier = candles.copy()
        rows = np.arange(0, t - back)
        earlier.loc[rows, ["open", "high", "low", "close"]] *= np.random.default_rng(t).uniform(
            0.5, 2.0, (len(rows), 1)
        )
        np.testing.assert_array_equal(
            make_label_frame(earlier, spec)["label"].to_numpy()[t:], labels[t:]
        )
    # and it does depend on candle t+h: moving its close moves forward-return labels
    if spec.scheme != "triple_barrier":
        moved = candles.copy()
        moved.loc[1_000 + h, "close"] *= 0.95 if labels[1_000] == BUY else 1.05
        assert make_label_frame(moved, spec)["label"].iloc[1_000] != labels[1_000]


def test_every_kind_is_covered() -> None:
    assert {f["kind"] for f in EVERY_KIND.features} == set(FEATURE_KINDS)
