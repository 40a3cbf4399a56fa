"""The live engine over many markets: one pass per closed minute, one model call per model."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from engine.live.engine import DirectInference, LiveEngine, SignalEvent
from engine.live.inference import LoadedModel, load_champion
from engine.live.markets import MarketsEngine
from engine.research.features import compute_features
from engine.trading.strategies import threshold_action
from engine.training.train import train_model
from store.candles import load_candles, upsert_candles
from store.signals import load_signals

MARKETS = ("KRW-BTC", "KRW-AAA", "KRW-BBB", "KRW-CCC")
DECIDED = 40  # candles replayed per market


class Counting(DirectInference):
    """The engine's own direct inference, counting its model calls and rows."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, model, keys, windows):  # type: ignore[no-untyped-def]
        self.calls.append(len(windows))
        return super().predict(model, keys, windows)


@pytest.fixture
def watched(con, btc_1m: pd.DataFrame) -> tuple[LoadedModel, dict[str, pd.DataFrame]]:
    """Four markets of real candles (KRW-BTC, and three later stretches of it renamed: other
    prices on the same clock) and an XGBoost champion trained on KRW-BTC."""
    upsert_candles(con, btc_1m.head(3000))
    train_model(con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 30, "n_jobs": 1})
    loaded, _ = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None
    base = load_candles(con, "KRW-BTC", "1").tail(600).reset_index(drop=True)
    series = {"KRW-BTC": base}
    for k, market in enumerate(MARKETS[1:], start=1):
        other = btc_1m.iloc[3000 + 700 * k : 3600 + 700 * k].reset_index(drop=True).copy()
        other["ts"] = base["ts"].to_numpy()  # the same minutes, other prices
        other["market"] = market
        upsert_candles(con, other)
        series[market] = load_candles(con, market, "1")
    return loaded, series


def _engine(con, loaded: LoadedModel, series: dict[str, pd.DataFrame], **kw) -> MarketsEngine:
    engine = MarketsEngine(con, "1", mode="replay", **kw)
    for market, candles in series.items():
        engine.add_market(market, loaded, threshold=0.45)
        engine.prime(market, candles.iloc[:-DECIDED])
    return engine


async def test_every_market_closing_together_is_one_pass_with_one_model_call(con, watched) -> None:
    loaded, series = watched
    counting = Counting()
    engine = _engine(con, loaded, series, inference=counting)
    probs: dict[str, list[np.ndarray]] = {m: [] for m in series}
    engine.subscribe(
        lambda e: probs[e.signal.market].append(e.probs) if isinstance(e, SignalEvent) else None
    )
    for i in range(DECIDED, 0, -1):
        minute = [candles.iloc[-i].to_dict() for candles in series.values()]
        signals = await engine.on_closed_many(minute)
        assert [s.market for s in signals] == list(series)
    assert engine.passes == DECIDED
    assert counting.calls == [len(series)] * DECIDED  # one call per pass, every market's rows
    for market, candles in series.items():  # each market's answers are its own batch rows
        batch = compute_features(candles, loaded.feature_spec, unit="1").iloc[-DECIDED:]
        expected = loaded.model.predict_proba(batch.to_numpy(np.float32))
        np.testing.assert_allclose(np.vstack(probs[market]), expected, rtol=1e-5, atol=1e-6)
        lane = engine.lanes[market]
        assert [s.action for s in lane.signals] == [threshold_action(p, 0.45)[0] for p in expected]
        stored = load_signals(con, market, last=1000)
        assert len(stored) == DECIDED and set(stored["source"]) == {loaded.record.ref}


async def test_batched_passes_decide_as_each_market_alone(con, watched) -> None:
    """The lanes of a pass never see each other's rows: the same signals as one engine per
    market, a market without a model (the rule) among them."""
    loaded, series = watched
    engine = MarketsEngine(con, "1", mode="replay", persist_signals=False)
    alone = {}
    for market, candles in series.items():
        model = None if market == "KRW-CCC" else loaded
        engine.add_market(market, model, threshold=0.45, no_model_reason="no champion")
        engine.prime(market, candles.iloc[:-DECIDED])
        lane = LiveEngine(
            con,
            market,
            "1",
            model=model,
            threshold=0.45,
            persist_signals=False,
            no_model_reason="no champion",
        )
        lane.prime(candles.iloc[:-DECIDED])
        alone[market] = lane
    for i in range(DECIDED, 0, -1):
        await engine.on_closed_many([c.iloc[-i].to_dict() for c in series.values()])
        for market, candles in series.items():
            await alone[market].on_closed(candles.iloc[-i].to_dict())
    for market in series:  # a stacked call and the one-row path differ in float rounding only
        ours, theirs = list(engine.lanes[market].signals), list(alone[market].signals)
        assert [(s.ts, s.action, s.source, s.reason) for s in ours] == [
            (s.ts, s.action, s.source, s.reason) for s in theirs
        ]
        np.testing.assert_allclose(
            [s.confidence for s in ours], [s.confidence for s in theirs], rtol=1e-6
        )
    assert all("no champion" in s.reason for s in engine.lanes["KRW-CCC"].signals)


async def test_candles_submitted_together_are_decided_in_one_pass_in_order(con, watched) -> None:
    """The feed submits each closed candle; those queued before a pass starts share it, and a
    market's second candle waits for the next pass."""
    loaded, series = watched
    counting = Counting()
    engine = _engine(con, loaded, series, inference=counting)
    for candles in series.values():
        engine.submit(candles.iloc[-DECIDED].to_dict())
    btc = series["KRW-BTC"]
    engine.submit(btc.iloc[-DECIDED + 1].to_dict())  # BTC's next minute, already closed
    await engine.drain()
    assert engine.passes == 2 and counting.calls == [len(series), 1]
    assert [s.ts for s in engine.lanes["KRW-BTC"].signals] == list(
        btc["ts"].iloc[-DECIDED : -DECIDED + 2]
    )
    await asyncio.sleep(0)
    engine.flush()
    assert len(load_signals(con, None, last=100)) == len(series) + 1


async def test_a_failed_pass_is_said_and_its_signals_are_written_by_the_next(con, watched) -> None:
    """A pass that cannot write (the store refuses) publishes why; the feed's next candles
    still pass, and the signals buffered meanwhile are written with theirs."""
    from engine.live.engine import StatusEvent

    loaded, series = watched
    engine = _engine(con, loaded, series)
    said: list[str] = []
    engine.subscribe(lambda e: said.append(e.text) if isinstance(e, StatusEvent) else None)
    con.execute("ALTER TABLE signals RENAME TO signals_away")  # every write now fails
    for candles in series.values():
        engine.submit(candles.iloc[-DECIDED].to_dict())
    await engine.drain()
    assert any(text.startswith("a pass failed: CatalogException") for text in said), said
    con.execute("ALTER TABLE signals_away RENAME TO signals")
    for candles in series.values():
        engine.submit(candles.iloc[-DECIDED + 1].to_dict())
    await engine.drain()
    stored = load_signals(con, None, last=100)
    assert len(stored) == 2 * len(series) and stored["ts"].nunique() == 2


async def test_a_watchlist_decides_each_market_at_its_own_unit(con, btc_1m) -> None:
    """KRW-BTC at 1 minute and KRW-ETH at 60 minutes in one replayed session: each lane reads
    its own unit's candles, its signals are stored at that unit, and a 60-minute candle is
    decided in the pass of the minute it closes with (its close time), not at its open."""
    from engine.live.session import open_session
    from tests.conftest import shared_candles

    hourly = shared_candles("KRW-ETH_60m.csv", 700, market="KRW-ETH", unit="60")
    minutes = btc_1m.head(700).copy()
    # the minutes overlap the hours' last 3 hours, so both units close in the same passes
    minutes["ts"] = (
        hourly["ts"].iloc[-1]
        + pd.Timedelta(hours=1)
        - pd.to_timedelta(np.arange(len(minutes))[::-1] + 1, unit="min")
    )
    upsert_candles(con, minutes)
    upsert_candles(con, hourly)
    session = await open_session(
        con,
        ["KRW-BTC", "KRW-ETH"],
        "1",
        units={"KRW-ETH": "60"},
        offline=True,
        replay_delay=0,
        replay_candles=150,
    )
    engine = session.markets
    assert engine is not None and engine.units == {"KRW-BTC": "1", "KRW-ETH": "60"}
    assert "REPLAY" in session.banner and "1m/60m" in session.banner
    passes: list[list[tuple[str, pd.Timestamp]]] = []
    real = engine.on_closed_many

    async def record(candles):  # type: ignore[no-untyped-def]
        rows = list(candles)
        passes.append([(c["market"], c["ts"]) for c in rows])
        return await real(rows)

    engine.on_closed_many = record  # type: ignore[method-assign]
    await session.runner
    btc = load_signals(con, "KRW-BTC", last=1000)
    eth = load_signals(con, "KRW-ETH", last=1000)
    assert len(btc) == 150 and set(btc["unit"]) == {"1"}
    assert len(eth) == 150 and set(eth["unit"]) == {"60"}
    # the hour opening at H closes with the minute opening at H+59
    last_hour = hourly["ts"].iloc[-1]
    together = [p for p in passes if ("KRW-ETH", last_hour) in p]
    assert together == [[("KRW-BTC", last_hour + pd.Timedelta(minutes=59)), ("KRW-ETH", last_hour)]]
    states = {s.market: s for s in engine.states()}
    assert states["KRW-ETH"].unit == "60" and states["KRW-ETH"].last_ts == last_hour


def test_a_watchlist_entry_names_its_unit() -> None:
    from pydantic import ValidationError

    from engine.service.live import LiveStartRequest

    request = LiveStartRequest(markets=["KRW-BTC", "KRW-ETH:60", "KRW-XRP:1"], unit="1")
    assert request.markets == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
    assert request.units == {"KRW-ETH": "60"}
    with pytest.raises(ValidationError, match="two units"):
        LiveStartRequest(markets=["KRW-ETH:60", "KRW-ETH:15"])
    with pytest.raises(ValidationError, match="candle unit '7'"):
        LiveStartRequest(markets=["KRW-ETH:7"])
    with pytest.raises(ValidationError, match="not in the watchlist"):
        LiveStartRequest(markets=["KRW-BTC"], units={"KRW-ETH": "60"})
