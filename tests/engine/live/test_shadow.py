"""Shadow evaluation in the live engine: the champion and every challenger/shadow predict on
the same closed candles with the same features; every prediction is logged; new seats take
effect on the next candle; a guard stops the champion with its reason."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from engine.live.engine import LiveEngine, SignalEvent
from engine.live.inference import LoadedModel, load_record
from engine.live.seats import Seat, Seats, load_seats
from engine.live.session import open_session
from engine.research.features import FeatureSpec, compute_features
from engine.training.train import train_model
from store.candles import load_candles, upsert_candles
from store.predictions import load_live_predictions
from store.registry import move_alias
from tests.conftest import shared_candles

MARKET, UNIT = "KRW-BTC", "1"
REPLAYED = 300


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return shared_candles("KRW-BTC_1m.csv", 4000)


@pytest.fixture
def seated(con, candles):
    """A store with real candles, a champion and a challenger (xgboost, small)."""
    upsert_candles(con, candles)
    champion = train_model(con, "xgboost", MARKET, UNIT, params={"n_estimators": 15}).model
    challenger = train_model(
        con, "xgboost", MARKET, UNIT, params={"n_estimators": 25, "max_depth": 3},
        name="challenger", promote=False,
    ).model
    move_alias(con, challenger.id, "challenger", by="user", reason="test")
    return champion, challenger


def _direct_probs(con, record, ts: pd.Series) -> np.ndarray:
    """The model's probabilities on those candles from the training code's batch features."""
    loaded = load_record(record)
    frame = load_candles(con, MARKET, UNIT)
    features = compute_features(frame, FeatureSpec.from_dict(record.feature_spec), unit=UNIT)
    features.index = pd.DatetimeIndex(frame["ts"])
    rows = features.loc[pd.DatetimeIndex(ts)].to_numpy(np.float32)
    return np.asarray(loaded.model.predict_proba(rows), dtype=np.float64)


async def test_champion_and_challenger_predict_on_every_replayed_candle(con, seated) -> None:
    champion, challenger = seated
    session = await open_session(
        con, MARKET, UNIT, offline=True, replay_delay=0, replay_candles=REPLAYED
    )
    engine = session.engine
    assert engine.model is not None and engine.model.record.id == champion.id
    assert [(s.model.record.id, s.role) for s in engine.shadows] == [(challenger.id, "challenger")]
    assert "1 in shadow" in session.banner
    await session.runner
    signals = engine.signals
    assert len(signals) == REPLAYED
    logged = {
        r.id: load_live_predictions(con, r.id, market=MARKET, unit=UNIT)
        for r in (champion, challenger)
    }
    decided = pd.Series([s.ts for s in signals])
    for record in (champion, challenger):
        rows = logged[record.id]
        # one row per replayed candle, the same candles for both
        assert list(rows["ts"]) == list(decided)
        assert rows["mode"].eq("replay").all() and rows["fallback"].isna().all()
        assert rows["latency_ms"].gt(0).all()
        # the same features as training: the logged probabilities are the batch ones
        np.testing.assert_allclose(
            np.stack(rows["probs"].to_list()), _direct_probs(con, record, rows["ts"]), atol=1e-6
        )
    assert logged[champion.id]["role"].eq("champion").all()
    assert logged[champion.id]["acted"].all()  # every signal was the champion's
    assert logged[challenger.id]["role"].eq("challenger").all()
    assert not logged[challenger.id]["acted"].any()
    assert [s.source for s in signals] == [champion.ref] * REPLAYED
    # the champion's logged action is the signal it gave
    assert list(logged[champion.id]["action"]) == [s.action for s in signals]


async def test_a_replay_of_the_same_candles_logs_nothing_twice(con, seated) -> None:
    for _ in range(2):
        session = await open_session(con, MARKET, UNIT, offline=True, replay_delay=0,
                                     replay_candles=50)
        await session.runner
    champion, challenger = seated
    for record in (champion, challenger):
        assert len(load_live_predictions(con, record.id)) == 50


async def test_new_seats_take_effect_on_the_next_candle_never_mid_decision(con, seated) -> None:
    champion, challenger = seated
    seats = load_seats(con, MARKET, UNIT)
    stored = load_candles(con, MARKET, UNIT)
    engine = LiveEngine(con, MARKET, UNIT, model=seats.champion, shadows=list(seats.shadows),
                        mode="replay")
    engine.prime(stored.iloc[:-3])
    swapped = Seats(load_record(challenger), f"champion {challenger.ref}",
                    (Seat(load_record(champion), "challenger"),))

    def swap_once(event: object) -> None:
        if isinstance(event, SignalEvent) and len(engine.signals) == 1:
            engine.seat(swapped)  # while the first candle's shadows are still to predict

    engine.subscribe(swap_once)
    for row in stored.iloc[-3:].to_dict("records"):
        await engine.on_closed(row)
    engine.flush()
    assert [s.model_id for s in engine.signals] == [champion.id, challenger.id, challenger.id]
    first = engine.signals[0].ts
    roles = con.execute(
        "SELECT model_id, role FROM predictions WHERE source = 'live' AND ts = ? ORDER BY model_id",
        [first],
    ).fetchall()
    assert roles == [(champion.id, "champion"), (challenger.id, "challenger")]


async def test_a_guard_stops_the_champion_and_the_rule_decides_with_its_reason(con, seated) -> None:
    champion, _ = seated
    seats = load_seats(con, MARKET, UNIT)
    stored = load_candles(con, MARKET, UNIT)
    engine = LiveEngine(con, MARKET, UNIT, model=seats.champion, mode="replay",
                        guard=lambda model, rows, ts: "expired: 99 h old (max 24 h)")
    engine.prime(stored.iloc[:-2])
    for row in stored.iloc[-2:].to_dict("records"):
        signal = await engine.on_closed(row)
        assert signal is not None and signal.source == engine.rule.name
        assert "fallback: expired: 99 h old (max 24 h)" in signal.reason
    engine.flush()
    rows = load_live_predictions(con, champion.id)
    assert len(rows) == 2 and not rows["acted"].any()
    assert rows["fallback"].eq("expired: 99 h old (max 24 h)").all()
    assert all(p is not None for p in rows["probs"])  # it still answered: judged as it would have


class _Broken:
    context = 0
    params: ClassVar[dict] = {}

    def predict_last(self, rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("weights corrupted")


async def test_a_failing_shadow_is_logged_with_why_and_never_touches_the_signal(con, seated) -> None:
    champion, challenger = seated
    seats = load_seats(con, MARKET, UNIT)
    good = seats.shadows[0].model
    broken = LoadedModel(good.record, _Broken(), good.feature_spec)  # type: ignore[arg-type]
    stored = load_candles(con, MARKET, UNIT)
    engine = LiveEngine(con, MARKET, UNIT, model=seats.champion, mode="replay",
                        shadows=[Seat(broken, "challenger")])
    engine.prime(stored.iloc[:-1])
    signal = await engine.on_closed(stored.iloc[-1].to_dict())
    engine.flush()
    assert signal is not None and signal.source == champion.ref
    rows = load_live_predictions(con, challenger.id)
    assert len(rows) == 1 and rows["probs"].iloc[0] is None
    assert rows["fallback"].iloc[0] == "model failed: RuntimeError: weights corrupted"


async def test_a_seated_model_that_reads_further_back_gets_its_window_from_the_store(
    con, seated
) -> None:
    """An LSTM (its window of rows on top of the features' warm-up) seated after an XGBoost
    champion decides on its very next candle: the engine reads the longer window from the
    store, up to and including the newest candle it holds."""
    champion, _ = seated
    lstm = train_model(
        con, "lstm", MARKET, UNIT, params={"epochs": 1, "device": "cpu"}, name="seq",
        promote=False,
    ).model
    seats = load_seats(con, MARKET, UNIT)
    stored = load_candles(con, MARKET, UNIT)
    engine = LiveEngine(con, MARKET, UNIT, model=seats.champion, mode="replay")
    engine.prime(stored.iloc[:-2])
    before = engine.window
    sequence = load_record(lstm)
    assert sequence.history_needed > before
    await engine.on_closed(stored.iloc[-2].to_dict())
    engine.seat(Seats(sequence, f"champion {lstm.ref}"))
    signal = await engine.on_closed(stored.iloc[-1].to_dict())
    assert engine.window == sequence.history_needed > before
    assert list(engine.history["ts"]) == list(stored["ts"].iloc[-engine.window :])
    assert signal is not None and signal.source == lstm.ref, signal.reason
    assert champion.ref != lstm.ref
