"""The live engine: candle closing, same features as training, threshold, rule fallback."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest

from engine.live.engine import CandleEvent, LiveEngine, SignalEvent
from engine.live.inference import LoadedModel, load_champion
from engine.live.session import open_session
from engine.live.sources import demo_candles, replay, upbit_live
from engine.research.dataset import build_dataset
from engine.research.features import DEFAULT_SPEC, compute_features
from engine.research.labels import LabelSpec
from engine.trading.strategies import SmaCross, threshold_action
from engine.training.train import train_model
from models.base import Model
from store.candles import load_candles, upsert_candles
from store.signals import load_signals
from tests.conftest import next_minute
from tests.fake_upbit import FakeUpbit, generate_candles


def _candle(ts: str, close: float) -> dict[str, Any]:
    return {"market": "KRW-BTC", "unit": "1", "ts": pd.Timestamp(ts, tz="UTC"), "open": close,
            "high": close, "low": close, "close": close, "volume": 1.0, "value": close}


async def test_the_feed_closes_a_candle_only_when_the_next_bucket_starts(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live engine decides on the candles the feed closes (the one closing rule), over the
    real path: fake Upbit WebSocket -> LiveFeed -> engine."""
    bucket = next_minute()
    first, second = generate_candles("KRW-BTC", "1", bucket, 2).to_dict("records")
    async with FakeUpbit() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        engine = LiveEngine(con, "KRW-BTC", "1", no_model_reason="no champion")
        updates: list[CandleEvent] = []
        engine.subscribe(lambda e: updates.append(e) if isinstance(e, CandleEvent) else None)
        task = asyncio.create_task(upbit_live(engine))
        await fake.wait_subscribed()
        await fake.push_candle("KRW-BTC", {**first, "close": first["close"] * 0.999})
        await fake.push_candle("KRW-BTC", first)  # the forming candle repeats
        await _until(lambda: sum(not e.closed for e in updates) == 2)
        assert engine.signals == deque()  # no candle closed yet
        await fake.push_candle("KRW-BTC", second)
        await _until(lambda: len(engine.signals) == 1)
        assert engine.signals[0].ts == first["ts"]
        assert engine.history["close"].iloc[-1] == first["close"]  # the latest frame wins
        await fake.push_candle("KRW-BTC", {**first, "close": 9.0})  # late frame: ignored
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(engine.signals) == 1 and engine.history["close"].iloc[-1] == first["close"]


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_sma_cross_rule() -> None:
    rule = SmaCross(fast=2, slow=4)
    assert rule.decide(np.array([1.0, 1.0, 1.0]))[0] == "hold"
    assert rule.decide(np.array([5.0, 5.0, 5.0, 5.0, 9.0]))[0] == "buy"
    assert rule.decide(np.array([5.0, 5.0, 5.0, 5.0, 1.0]))[0] == "sell"
    assert rule.decide(np.array([5.0, 5.0, 5.0, 5.0, 5.0]))[0] == "hold"


def test_threshold_action() -> None:
    assert threshold_action(np.array([0.1, 0.2, 0.7]), 0.6)[0] == "buy"
    action, confidence, reason = threshold_action(np.array([0.1, 0.35, 0.55]), 0.6)
    assert action == "hold" and confidence == 0.55 and "below threshold" in reason
    assert threshold_action(np.array([0.8, 0.1, 0.1]), 0.6)[0] == "sell"


@pytest.fixture
def trained(con, btc_1m: pd.DataFrame) -> LoadedModel:
    upsert_candles(con, btc_1m)
    train_model(con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 40, "n_jobs": 1})
    loaded, _ = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None
    return loaded


async def test_replay_gives_the_same_signals_as_batch_prediction(con, trained: LoadedModel) -> None:
    """Live features come from the trailing window with the same code as training."""
    stored = load_candles(con, "KRW-BTC", "1")
    engine = LiveEngine(con, "KRW-BTC", "1", model=trained, threshold=0.45, mode="replay")
    start = len(stored) - 200
    engine.prime(stored.iloc[:start])
    events: list[SignalEvent] = []
    engine.subscribe(lambda e: events.append(e) if isinstance(e, SignalEvent) else None)
    await replay(engine, stored.iloc[start:])

    batch = compute_features(stored, DEFAULT_SPEC).iloc[start:]
    probs = trained.model.predict_proba(batch.to_numpy(np.float32))
    expected = [threshold_action(p, 0.45)[0] for p in probs]
    assert [s.action for s in engine.signals] == expected
    live_probs = np.vstack([e.probs for e in events])
    np.testing.assert_allclose(live_probs, probs, rtol=1e-5, atol=1e-6)
    assert all(s.source == trained.record.ref for s in engine.signals)
    logged = load_signals(con, "KRW-BTC", last=1000)
    assert len(logged) == 200 and set(logged["mode"]) == {"replay"}


async def test_without_a_model_the_rule_decides_and_says_why(con) -> None:
    candles = demo_candles(400)
    engine = LiveEngine(con, "KRW-BTC", "1", no_model_reason="no champion model for KRW-BTC unit 1", mode="demo")
    engine.prime(candles.iloc[:100])
    await replay(engine, candles.iloc[100:])
    assert {s.source for s in engine.signals} == {"sma-cross(10,30)"}
    assert {"buy", "sell"} <= {s.action for s in engine.signals}
    assert all("fallback: no champion model" in s.reason for s in engine.signals)


class _Broken(Model):
    """A model that fails the way real ones do: NaN output, wrong shape, slowness, exceptions."""

    kind = "broken"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def fit(self, *args: Any) -> Self:
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.mode == "nan":
            return np.full((len(X), 3), np.nan)
        if self.mode == "shape":
            return np.ones((len(X), 2)) / 2
        if self.mode == "slow":
            time.sleep(0.5)
            return np.ones((len(X), 3)) / 3
        raise RuntimeError("CUDA error: device-side assert triggered")

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Self:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("mode", "cause"),
    [("nan", "NaN"), ("shape", "2 probabilities"), ("slow", "timed out"), ("raise", "CUDA error")],
)
async def test_a_failing_model_falls_back_to_the_rule_with_the_cause(con, trained: LoadedModel, mode: str, cause: str) -> None:
    broken = LoadedModel(trained.record, _Broken(mode), trained.feature_spec)
    engine = LiveEngine(con, "KRW-BTC", "1", model=broken, inference_timeout=0.1, mode="replay")
    stored = load_candles(con, "KRW-BTC", "1")
    engine.prime(stored.iloc[:-3])
    await replay(engine, stored.iloc[-3:])
    assert len(engine.signals) == 3
    for signal in engine.signals:
        assert signal.source == "sma-cross(10,30)"
        assert "fallback" in signal.reason and cause in signal.reason


async def test_a_bucket_the_window_already_holds_is_replaced_and_an_older_one_ignored(con) -> None:
    """REST may store a bucket before the socket closes it: one row per ts, never two."""
    candles = demo_candles(60)
    engine = LiveEngine(con, "KRW-BTC", "1", persist_signals=False)
    engine.prime(candles.iloc[:40])
    newest = candles.iloc[39].to_dict()
    final = {**newest, "close": newest["close"] * 1.01, "high": newest["high"] * 1.01}
    signal = await engine.on_closed(final)
    assert signal is not None and signal.ts == newest["ts"]
    assert len(engine.history) == 40 and engine.history["ts"].is_unique
    assert engine.history["close"].iloc[-1] == pytest.approx(final["close"])
    late = await engine.on_closed(candles.iloc[30].to_dict())  # older than the window's newest
    assert late is None and len(engine.signals) == 1
    assert list(engine.history["ts"]) == list(candles["ts"].iloc[:40])


async def test_offline_session_replays_stored_candles_else_runs_a_demo(con, btc_1m: pd.DataFrame) -> None:
    demo = await open_session(con, "KRW-BTC", "1", offline=True, replay_delay=0)
    assert demo.mode == "demo" and "DEMO" in demo.banner
    demo.runner.close()
    upsert_candles(con, btc_1m.head(600))
    session = await open_session(con, "KRW-BTC", "1", offline=True, replay_delay=0)
    assert session.mode == "replay" and "REPLAY" in session.banner and "no champion" in session.banner
    count = await session.runner
    assert count == 600 - session.engine.window
    assert len(load_signals(con, "KRW-BTC", last=1000)) == count


def test_labels_spec_defaults_cover_the_round_trip_fee() -> None:
    assert LabelSpec().threshold >= 2 * 0.0005


def test_dataset_columns_match_engine_features(btc_1m: pd.DataFrame) -> None:
    data = build_dataset(btc_1m.head(600), DEFAULT_SPEC, LabelSpec())
    assert data.columns == list(compute_features(btc_1m.head(100)).columns)


async def test_a_sequence_model_reads_its_window_live_as_in_batch(con, btc_1m: pd.DataFrame) -> None:
    """An LSTM reads the trailing `window` feature rows; live equals batch on the same candles."""
    upsert_candles(con, btc_1m)
    train_model(con, "lstm", "KRW-BTC", "1",
                params={"epochs": 1, "window": 8, "hidden": 8, "layers": 1, "device": "cpu"})
    loaded, _ = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and loaded.context == 7
    stored = load_candles(con, "KRW-BTC", "1")
    engine = LiveEngine(con, "KRW-BTC", "1", model=loaded, threshold=0.4, mode="replay")
    assert engine.window == loaded.history_needed
    start = len(stored) - 20
    engine.prime(stored.iloc[:start])
    probs: list[np.ndarray] = []
    engine.subscribe(lambda e: probs.append(e.probs) if isinstance(e, SignalEvent) else None)
    await replay(engine, stored.iloc[start:])
    assert all(s.source == loaded.record.ref for s in engine.signals)
    batch = compute_features(stored, loaded.feature_spec, unit="1")
    expected = loaded.model.predict_proba(batch.to_numpy(np.float32))[-20:]
    np.testing.assert_allclose(np.vstack(probs), expected, rtol=1e-4, atol=1e-5)


async def test_an_unexpected_error_before_inference_still_falls_back_to_the_rule(
    con, trained: LoadedModel
) -> None:
    class Unready(LoadedModel):
        def check_rows(self, rows: np.ndarray, columns: list[str]) -> np.ndarray:
            raise KeyError("rsi_14")

    engine = LiveEngine(con, "KRW-BTC", "1", mode="replay",
                        model=Unready(trained.record, trained.model, trained.feature_spec))
    stored = load_candles(con, "KRW-BTC", "1")
    engine.prime(stored.iloc[:-2])
    await replay(engine, stored.iloc[-2:])
    assert [s.source for s in engine.signals] == ["sma-cross(10,30)"] * 2
    assert all("fallback: model failed: KeyError: 'rsi_14'" in s.reason for s in engine.signals)
