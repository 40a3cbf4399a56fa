"""Rolling live metrics: equal to a batch recomputation with scikit-learn on the same resolved
rows, reliability bins that add up, latency percentiles over every row, and the hit rate and
paper PnL after fees worked out by hand on a small frame."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from engine.ops.live_metrics import calibration_bins, compute_live_metrics, live_metrics
from models import CLASSES
from store.predictions import insert_live_predictions

FEE = 0.0005


def random_log(n: int, seed: int) -> pd.DataFrame:
    """A live log of n rows: skilled-ish probabilities, a fifth pending, some fallbacks."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    resolved = rng.random(n) > 0.2
    fallback = rng.random(n) < 0.05
    actions = np.array(CLASSES, dtype=object)[probs.argmax(axis=1)]
    return pd.DataFrame(
        {
            "ts": pd.date_range("2025-09-01", periods=n, freq="min", tz="UTC"),
            "probs": [None if f else list(p) for p, f in zip(probs, fallback, strict=True)],
            "action": np.where(fallback, None, actions),
            "acted": rng.random(n) < 0.5,
            "latency_ms": rng.gamma(2.0, 3.0, n),
            "fallback": np.where(fallback, rng.choice(["error", "expired"], n), None),
            "label_resolved": np.where(resolved, np.array(CLASSES, dtype=object)[labels], None),
            "outcome_return": np.where(resolved, rng.normal(0, 0.003, n), np.nan),
        }
    )


def test_metrics_equal_a_batch_recomputation_with_sklearn() -> None:
    frame = random_log(2000, seed=7)
    m = compute_live_metrics(frame, fee=FEE, bins=10)
    scored = frame["label_resolved"].notna() & frame["probs"].notna()
    proba = np.array(frame["probs"][scored].tolist())
    y_true = frame["label_resolved"][scored].map(CLASSES.index).to_numpy()
    y_pred = proba.argmax(axis=1)
    assert m.n_predictions == 2000
    assert m.n_resolved == frame["label_resolved"].notna().sum()
    assert m.n_pending == 2000 - m.n_resolved and m.n_scored == scored.sum() > 1000
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m.log_loss == pytest.approx(log_loss(y_true, proba, labels=[0, 1, 2]))
    assert 0.4 < m.accuracy < 0.9  # skilled, not perfect: the comparisons mean something
    # reliability bins: every scored row once; each bin's numbers by hand
    assert sum(b.count for b in m.calibration) == m.n_scored
    confidence = proba.max(axis=1)
    ece = 0.0
    for b in m.calibration:
        inside = (confidence >= b.lower) & (
            (confidence < b.upper) if b.upper < 1 else (confidence <= 1)
        )
        assert b.count == inside.sum()
        if b.count:
            assert b.confidence == pytest.approx(confidence[inside].mean())
            assert b.accuracy == pytest.approx((y_pred == y_true)[inside].mean())
            ece += b.count / m.n_scored * abs(b.accuracy - b.confidence)
        else:
            assert math.isnan(b.confidence) and math.isnan(b.accuracy)
    assert m.ece == pytest.approx(ece) and m.ece > 0
    # latency over every row, resolved or not; fallbacks by reason
    assert m.latency_p50_ms == pytest.approx(np.percentile(frame["latency_ms"], 50))
    assert m.latency_p99_ms == pytest.approx(np.percentile(frame["latency_ms"], 99))
    assert m.fallbacks == frame["fallback"].notna().sum() > 0
    assert m.fallback_reasons == frame["fallback"].value_counts().sort_index().to_dict()
    assert m.first_ts == frame["ts"].iloc[0] and m.last_ts == frame["ts"].iloc[-1]


def test_hit_rate_and_pnl_after_fees_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2025-09-01", periods=7, freq="min", tz="UTC"),
            "probs": [[0.1, 0.2, 0.7]] * 7,
            "action": ["buy", "buy", "sell", "sell", "hold", "buy", "buy"],
            "acted": [True, True, True, True, True, False, True],
            "latency_ms": [1.0] * 7,
            "fallback": [None] * 7,
            "label_resolved": ["buy", "sell", "sell", "buy", "hold", "buy", None],
            "outcome_return": [0.01, -0.002, -0.004, 0.003, 0.0, 0.02, np.nan],
        }
    )
    m = compute_live_metrics(frame, fee=FEE)
    # acted buy/sell: rows 0, 1, 2, 3, 6 (6 pending); hits: 0 (up) and 2 (down)
    assert (m.n_acted, m.n_acted_resolved, m.hit_rate) == (5, 4, 0.5)
    # trades: acted resolved buys 0 and 1, each long over the horizon, a fee per side
    keep = (1 - FEE) ** 2
    trades = [1.01 * keep - 1, 0.998 * keep - 1]
    assert m.n_trades == 2
    assert m.pnl_after_fees == pytest.approx(sum(trades))
    assert m.pnl_after_fees_mean == pytest.approx(sum(trades) / 2)
    # the model's own actions, acted or not: row 5 joins (a hit, a trade)
    assert (m.own_signals, m.own_hit_rate, m.own_trades) == (5, 0.6, 3)
    assert m.own_pnl_after_fees == pytest.approx(sum(trades) + 1.02 * keep - 1)
    # nothing resolved: undefined, counts 0; the JSON form carries null
    empty = compute_live_metrics(frame.assign(label_resolved=None, outcome_return=np.nan))
    assert empty.n_trades == 0 and math.isnan(empty.hit_rate) and math.isnan(empty.accuracy)
    data = empty.to_dict()
    assert data["hit_rate"] is None and data["pnl_after_fees"] is None and data["ece"] is None
    assert data["n_pending"] == 7 and data["latency_p50_ms"] == 1.0


def test_calibration_of_a_perfectly_calibrated_forecaster_is_near_zero() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.34, 1.0, 200_000)
    correct = rng.random(200_000) < confidence
    bins, ece = calibration_bins(confidence, correct, bins=10)
    assert ece < 0.01 and sum(b.count for b in bins) == 200_000
    _, overconfident = calibration_bins(confidence, rng.random(200_000) < confidence - 0.2)
    assert overconfident == pytest.approx(0.2, abs=0.01)


def test_live_metrics_reads_the_newest_rows_of_the_store(con: duckdb.DuckDBPyConnection) -> None:
    frame = random_log(300, seed=11).assign(market="KRW-BTC", unit="1", model_id=4)
    insert_live_predictions(con, frame)
    insert_live_predictions(con, frame.assign(unit="60"))  # another series of the same model
    con.register("outcomes", frame[["ts", "label_resolved", "outcome_return"]])
    con.execute(  # the resolver's columns, as it would have set them
        "UPDATE predictions p SET label_resolved = o.label_resolved,"
        " outcome_return = o.outcome_return FROM outcomes o WHERE p.ts = o.ts"
    )
    stored = live_metrics(con, 4, market="KRW-BTC", unit="1", last=120)
    expected = compute_live_metrics(frame.iloc[-120:].reset_index(drop=True))
    assert stored.n_predictions == 120 and stored.first_ts == frame["ts"].iloc[-120]
    assert stored.to_dict() == expected.to_dict()
    assert live_metrics(con, 4, last=1000).n_predictions == 600
    assert live_metrics(con, 5).n_predictions == 0
    with pytest.raises(ValueError, match="last=0"):
        live_metrics(con, 4, last=0)
