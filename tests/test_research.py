"""Features, labels and splits on real candles: nothing may see the future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.dataset import build_dataset
from engine.features import DEFAULT_SPEC, FeatureSpec, compute_features
from engine.labels import BUY, HOLD, SELL, LabelSpec, make_labels
from engine.splits import SplitSpec, chronological_split


def test_feature_spec_round_trips_and_hash_is_stable() -> None:
    again = FeatureSpec.from_dict(DEFAULT_SPEC.to_dict())
    assert again == DEFAULT_SPEC
    assert again.hash() == DEFAULT_SPEC.hash()
    changed = FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), "talib": True})
    assert changed.hash() != DEFAULT_SPEC.hash()
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        FeatureSpec.from_dict({"features": [{"kind": "nope"}]})


def test_features_are_scale_free_and_defined_after_warmup(btc_1m: pd.DataFrame) -> None:
    features = compute_features(btc_1m.head(1000))
    warm = DEFAULT_SPEC.warmup()
    assert features.iloc[warm:].notna().all().all()
    assert features.iloc[: warm - 1].isna().any(axis=1).all()
    scaled = btc_1m.head(1000).copy()
    scaled[["open", "high", "low", "close"]] *= 1000.0
    pd.testing.assert_frame_equal(compute_features(scaled), features, rtol=1e-6, atol=1e-9)


def test_changing_candles_after_t_changes_no_feature_at_or_before_t(btc_1m: pd.DataFrame) -> None:
    candles = btc_1m.head(1500).reset_index(drop=True)
    t = 1000
    before = compute_features(candles)
    future = candles.copy()
    rng = np.random.default_rng(0)
    future.loc[t + 1 :, ["open", "high", "low", "close"]] *= rng.uniform(0.8, 1.2, (len(future) - t - 1, 1))
    future.loc[t + 1 :, "volume"] *= 7.0
    after = compute_features(future)
    pd.testing.assert_frame_equal(before.iloc[: t + 1], after.iloc[: t + 1])
    assert not before.iloc[t + 1 :].equals(after.iloc[t + 1 :])  # the perturbation did bite


def test_labels_use_only_later_candles_and_the_last_horizon_rows_have_none(btc_1m: pd.DataFrame) -> None:
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
