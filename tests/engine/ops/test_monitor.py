"""Monitoring a model (engine.ops.monitor): performance drift on synthetic resolved-prediction
streams with a regime change (accuracy 0.6 -> 0.4, trade PnL +0.2 sd -> -0.4 sd at candle
2000) raises one event within a measured bound and none on stationary streams of the same
length, over fixed seeds; the dissimilarity gate, expiry and feature drift on a real XGBoost
model trained on real candles (its training reference recomputed from the store)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.ops.drift import ks_2samp, psi
from engine.ops.monitor import (
    DriftEvent,
    PerformanceMonitor,
    ReferenceUnavailable,
    clear_reference_cache,
    expired,
    feature_reference,
    model_features,
    out_of_distribution,
    record_feature_drift,
    store_drift_event,
    trade_returns,
)
from engine.research.features import FeatureSpec
from engine.research.features.calendar import CALENDAR_COLUMNS
from engine.training.train import train_model
from store.candles import load_candles, upsert_candles
from store.db import connect
from store.drift import drift_events, feature_drift, insert_drift_event, latest_feature_drift
from store.registry import ModelRecord, get_model
from tests.conftest import shared_candles

CLASSES = np.array(["sell", "hold", "buy"])
N, CHANGE = 4000, 2000  # candles, and the candle where the regime changes
SEEDS = range(8)
SD = 0.01  # trade return sd
FEE = 0.0005
# Delays (candles after the change until the event) measured on these streams over seeds
# 0..39 with ADWIN (delta 0.002): correctness 111..591 (median 207), PnL (half the candles
# buy) 224..681 (median 380); no event on any stationary stream. The bounds leave a margin
# over the largest, the medians over theirs.
BOUND = {"correctness": 800, "pnl": 1000}
MEDIAN = {"correctness": 350, "pnl": 550}


def resolved_stream(seed: int, accuracy_after: float = 0.6, pnl_after: float = 0.2) -> pd.DataFrame:
    """N resolved predictions of one model: correct with probability 0.6, then
    `accuracy_after` from candle CHANGE on; half of them buy (a trade), the rest sell or hold
    (flat: no trade); each trade's return after fees N(0.2 sd, sd), then N(pnl_after sd, sd)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, N)
    after = np.arange(N) >= CHANGE
    correct = rng.random(N) < np.where(after, accuracy_after, 0.6)
    predicted = np.where(correct, labels, (labels + rng.integers(1, 3, N)) % 3)
    probs = np.full((N, 3), 0.25)
    probs[np.arange(N), predicted] = 0.5
    trade = rng.normal(np.where(after, pnl_after, 0.2) * SD, SD)
    outcome = (1.0 + trade) / (1.0 - FEE) ** 2 - 1.0  # the return that made the trade's
    buys = rng.random(N) < 0.5
    flat = np.where(rng.random(N) < 0.5, "sell", "hold")
    return pd.DataFrame(
        {
            "ts": pd.date_range("2025-01-01", periods=N, freq="min", tz="UTC"),
            "market": "KRW-BTC",
            "unit": "1",
            "probs": list(probs),
            "label_resolved": CLASSES[labels],
            "action": np.where(buys, "buy", flat),
            "outcome_return": outcome,
        }
    )


def monitor_events(
    frame: pd.DataFrame, monitor: PerformanceMonitor, step: int = 250
) -> list[DriftEvent]:
    """Feed the stream as resolved rows arrive: batches, each overlapping the one before (the
    monitor must skip rows it has seen)."""
    events: list[DriftEvent] = []
    for start in range(0, len(frame), step):
        events += monitor.update(7, frame.iloc[max(0, start - 10) : start + step])
    return events


def delay(frame: pd.DataFrame, event: DriftEvent) -> int:
    return int(np.flatnonzero(frame["ts"] == pd.Timestamp(event.ts))[0]) - CHANGE


@pytest.mark.parametrize("stream", ["correctness", "pnl"])
def test_a_fall_raises_one_event_within_the_bound_and_a_stationary_stream_none(
    stream: str,
) -> None:
    delays = []
    for seed in SEEDS:
        steady = resolved_stream(seed)
        assert monitor_events(steady, PerformanceMonitor()) == [], seed
        changed = (
            resolved_stream(seed, accuracy_after=0.4)
            if stream == "correctness"
            else resolved_stream(seed, pnl_after=-0.4)
        )
        events = monitor_events(changed, PerformanceMonitor())
        assert [e.stream for e in events] == [stream], (seed, events)
        event = events[0]
        assert 0 <= delay(changed, event) <= BOUND[stream], (seed, delay(changed, event))
        delays.append(delay(changed, event))
        assert event.worsened and event.detector == "adwin"
        assert (event.model_id, event.market, event.unit) == (7, "KRW-BTC", "1")
        if stream == "correctness":
            assert 0.5 < event.before_mean < 0.7 and event.after_mean < event.before_mean
            assert event.detail.startswith("accuracy fell from")
        else:
            assert event.before_mean > 0 and event.after_mean < event.before_mean
            assert event.detail.startswith("mean trade return fell from")
    assert np.median(delays) <= MEDIAN[stream]


def test_page_hinkley_beside_adwin_and_the_stream_conventions() -> None:
    frame = resolved_stream(3, pnl_after=-0.4)
    events = monitor_events(frame, PerformanceMonitor(page_hinkley=True))
    assert {e.stream for e in events} == {"pnl"}
    assert "page-hinkley" in {e.detector for e in events}
    assert all(0 <= delay(frame, e) <= BOUND["pnl"] for e in events)
    # the trade convention (long/flat spot): a buy earns r after a fee per side; sell and hold
    # trade nothing
    returns = trade_returns(np.array(["buy", "sell", "hold"]), np.array([0.01, 0.01, 0.01]))
    assert returns[0] == pytest.approx(1.01 * (1 - FEE) ** 2 - 1)
    assert np.isnan(returns[1:]).all()
    # rows without an answer or without an outcome are not observations; old rows are skipped
    monitor = PerformanceMonitor()
    rows = resolved_stream(0).iloc[:40].copy()
    rows.loc[rows.index[:5], "probs"] = None
    rows.loc[rows.index[5:10], "label_resolved"] = None
    assert monitor.update(1, rows) == []
    assert monitor.last_seen(1) == rows["ts"].iloc[-1]
    watch = monitor._watches[(1, "correctness")]
    assert watch.adwin is not None and watch.adwin.width == 30
    assert monitor.update(1, rows) == [] and watch.adwin.width == 30
    # an event is a drift_events row
    event = DriftEvent(
        rows["ts"].iloc[-1].to_pydatetime(),
        "KRW-BTC",
        "1",
        1,
        "pnl",
        "adwin",
        0.002,
        -0.004,
        120,
        "mean trade return fell",
    )
    assert set(event.to_row()) == {
        "ts",
        "market",
        "unit",
        "model_id",
        "stream",
        "detector",
        "before_mean",
        "after_mean",
        "observations",
        "detail",
        "action",
    }


def test_drift_events_are_stored_and_read_newest_first(con) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    frame = resolved_stream(1, accuracy_after=0.4)
    [event] = monitor_events(frame, PerformanceMonitor())
    stored_id = store_drift_event(con, replace(event, action="retrain started (run 3)"))
    [stored] = drift_events(con, model_id=7)
    assert (stored.id, stored.ts, stored.stream, stored.detector) == (
        stored_id,
        event.ts,
        "correctness",
        "adwin",
    )
    assert (stored.before_mean, stored.after_mean, stored.observations) == (
        event.before_mean,
        event.after_mean,
        event.observations,
    )
    assert (stored.action, stored.detail) == ("retrain started (run 3)", event.detail)
    for minutes, model_id in ((1, 1), (3, 2), (2, 1)):
        insert_drift_event(
            con,
            ts=base + timedelta(minutes=minutes),
            market="KRW-BTC",
            unit="1",
            model_id=model_id,
            stream="correctness",
            detector="adwin",
            before_mean=0.6,
            after_mean=0.4,
            observations=100,
            detail="accuracy fell",
        )
    insert_drift_event(
        con, ts=base, market="KRW-ETH", unit="1", model_id=3, stream="pnl", detector="page-hinkley"
    )
    listed = drift_events(con, market="KRW-BTC", unit="1")
    assert [(e.ts.minute, e.model_id) for e in listed[1:]] == [(3, 2), (2, 1), (1, 1)]
    assert listed[0].id == stored_id  # 2025-01-02: the newest
    assert [e.model_id for e in drift_events(con, model_id=1, limit=1)] == [1]
    assert drift_events(con, market="KRW-ETH", unit="1")[0].stream == "pnl"
    with pytest.raises(ValueError, match="stream"):
        insert_drift_event(
            con, ts=base, market="KRW-BTC", unit="1", model_id=1, stream="latency", detector="adwin"
        )


# --- a real model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small XGBoost model of KRW-BTC 1m trained on 3000 real candles."""
    home = tmp_path_factory.mktemp("monitor")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
        train_model(con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 10, "device": "cpu"})
        con.close()
    return home


@pytest.fixture
def store(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, ModelRecord]]:
    monkeypatch.setenv("UPQUANT_HOME", str(trained))
    clear_reference_cache()
    con = connect()
    yield con, get_model(con, 1)
    con.close()


def training_features(con, record: ModelRecord) -> pd.DataFrame:
    """The model's feature rows over its training part, as training computed them."""
    spec = FeatureSpec.from_dict(record.feature_spec)
    features = model_features(
        load_candles(con, "KRW-BTC", "1"), spec, record.params["columns"], "1"
    )
    first, last = (pd.Timestamp(record.tags[k]) for k in ("train_from", "train_to"))
    return features[(features.index >= first) & (features.index <= last)].dropna()


def test_the_dissimilarity_gate_passes_training_rows_and_refuses_foreign_ones(store) -> None:
    con, record = store
    reference = feature_reference(con, record)
    assert feature_reference(con, record) is reference  # cached by sha256
    rows = training_features(con, record)
    assert list(reference.features) == record.params["columns"] and reference.rows == len(rows)
    assert str(rows.index[0]) == record.tags["train_from"]
    passed = [out_of_distribution(reference, row, 0.25) for row in rows.to_numpy()[::50]]
    assert passed.count(None) == len(passed)

    # the newest candle's prices 10x: its returns, ranges and oscillators leave the range
    candles = load_candles(con, "KRW-BTC", "1")
    jumped = candles.copy()
    for column in ("open", "high", "low", "close"):
        jumped.loc[jumped.index[-1], column] *= 10
    spec = FeatureSpec.from_dict(record.feature_spec)
    row = model_features(jumped, spec, record.params["columns"], "1").to_numpy()[-1]
    reason = out_of_distribution(reference, row, 0.25)
    assert reason is not None and reason.startswith("out of distribution: ")
    outside = int(reason.split(": ")[1].split("/")[0])
    assert outside > 0.25 * reference.judged.sum()
    assert f"/{reference.judged.sum()} features outside the training range (" in reason

    # one feature far outside: refused when the share allows none, named first; the
    # calendar's features are not judged (the clock alone sets them)
    judged = int(reference.judged.sum())
    calendar = [i for i, name in enumerate(reference.features) if name in CALENDAR_COLUMNS]
    assert calendar and judged == len(reference.features) - len(calendar)
    one = rows.to_numpy()[100].copy()
    one[calendar] = 1e6
    assert out_of_distribution(reference, one, 0.01) is None
    j = reference.features.index("logret_1")
    one[j] = reference.high[j] + 1000 * reference.width[j]
    assert out_of_distribution(reference, one, 0.25) is None
    refused = out_of_distribution(reference, one, 0.01)
    assert refused == (
        f"out of distribution: 1/{judged} features outside the training range"
        f" ({reference.features[j]})"
    )
    one[j + 1] = np.nan  # not finite: outside, and farther than any finite value
    assert out_of_distribution(reference, one, 0.01) == (
        f"out of distribution: 2/{judged} features outside the training range"
        f" ({reference.features[j + 1]}, {reference.features[j]})"
    )
    with pytest.raises(ValueError, match="values"):
        out_of_distribution(reference, one[:-1], 0.25)


def test_expired_counts_from_the_newest_candle_learnt(store) -> None:
    _, record = store
    learnt = pd.Timestamp(record.tags["validation_to"]).to_pydatetime()
    assert expired(record, learnt + timedelta(hours=5), None) is None
    assert expired(record, learnt + timedelta(hours=5), 6) is None
    reason = expired(record, learnt + timedelta(hours=30), 24)
    assert reason == (
        f"expired: trained on data up to {learnt:%Y-%m-%d %H:%M} UTC (30 h old, max 24 h)"
    )
    bare = ModelRecord(**{**record.__dict__, "tags": None})
    assert "trained on data up to " + f"{bare.created_at:%Y-%m-%d}" in (
        expired(bare, bare.created_at + timedelta(hours=2), 1.5) or ""
    )
    with pytest.raises(ReferenceUnavailable, match="no training range"):
        feature_reference(
            connect(), ModelRecord(**{**record.__dict__, "sha256": "x" * 64, "tags": {}})
        )


def test_feature_drift_is_recorded_against_the_training_reference(store) -> None:
    con, record = store
    rows = record_feature_drift(con, record, "KRW-BTC", "1", last=500)
    reference = feature_reference(con, record)
    assert [r.feature for r in rows] == list(reference.features)
    # the same numbers as drift.psi / ks_2samp on the training rows and the newest 500 rows
    training = training_features(con, record).to_numpy()
    spec = FeatureSpec.from_dict(record.feature_spec)
    recent = model_features(
        load_candles(con, "KRW-BTC", "1"), spec, record.params["columns"], "1"
    ).iloc[-500:]
    for j, row in enumerate(rows):
        assert row.psi == pytest.approx(psi(training[:, j], recent.to_numpy()[:, j]), abs=1e-9)
        assert row.ks == pytest.approx(ks_2samp(reference.sample[:, j], recent.to_numpy()[:, j])[0])
        assert row.ts == recent.index[-1] and row.rows == 500
    stored = feature_drift(con, model_id=record.id)
    assert len(stored) == len(rows)
    by_name = {r.feature: r for r in stored}
    assert all(by_name[r.feature].psi == pytest.approx(r.psi) for r in rows)
    # computed again for the same candle: replaced, not doubled
    record_feature_drift(con, record, "KRW-BTC", "1", last=500)
    assert len(feature_drift(con, market="KRW-BTC", unit="1")) == len(rows)
    assert list(latest_feature_drift(con, market="KRW-BTC", unit="1")) == [record.id]
    # the training rows against their own reference: no drift; shifted by the range: a shift
    for j in range(len(rows)):
        assert reference.psi(j, training[:, j]) == pytest.approx(0.0, abs=1e-12)
        assert reference.psi(j, training[:, j] + 2 * reference.width[j]) > 0.25
