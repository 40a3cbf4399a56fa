"""A live session's model operations (engine/service/modelops.py) on real candles and real
models: outcomes resolved at the horizon, live metrics, the expiry and dissimilarity guards,
new seats on the next candle, and a drift event that starts a retrain."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from engine.live.engine import LiveEngine, StatusEvent
from engine.live.seats import load_seats
from engine.ops.live_metrics import live_metrics
from engine.ops.promotion import move
from engine.ops.settings import OpsSettings, set_settings
from engine.research.labels import LabelSpec, make_labels
from engine.service import Workstation
from engine.service.modelops import ModelOpsCycle, open_managed_session
from engine.service.training import TrainStatusRequest
from engine.training.train import train_model
from models import CLASSES
from store.candles import load_candles, upsert_candles
from store.db import connect
from store.drift import drift_events
from store.predictions import insert_live_predictions, load_live_predictions
from store.registry import alias_history, get_model, move_alias
from tests.conftest import shared_candles

MARKET, UNIT = "KRW-BTC", "1"
CANDLES = 4000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with real candles, a champion and a challenger (small xgboost models)."""
    home = tmp_path_factory.mktemp("modelops")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        patch.delenv("UPQUANT_ARTIFACT_KEY", raising=False)
        patch.delenv("UPQUANT_ARTIFACT_KEY_FILE", raising=False)
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", CANDLES))
        params = {"n_estimators": 15, "device": "cpu"}
        train_model(con, "xgboost", MARKET, UNIT, params=params, name="champ")
        challenger = train_model(
            con,
            "xgboost",
            MARKET,
            UNIT,
            params={**params, "max_depth": 3},
            name="chall",
            promote=False,
        ).model
        move_alias(con, challenger.id, "challenger", by="user", reason="test")
        con.close()
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    monkeypatch.setenv("UPQUANT_SERVER", "off")
    monkeypatch.setenv("UPQUANT_JOB_PRIORITY", "normal")
    monkeypatch.delenv("UPQUANT_ARTIFACT_KEY", raising=False)
    monkeypatch.delenv("UPQUANT_ARTIFACT_KEY_FILE", raising=False)
    return copy


async def test_a_replay_resolves_every_models_outcomes_at_the_horizon(con) -> None:
    session = await open_managed_session(
        con, MARKET, UNIT, offline=True, replay_delay=0, replay_candles=300
    )
    await session.runner  # ends with a last model-operations cycle
    candles = load_candles(con, MARKET, UNIT)
    for ref in ("champ@1", "chall@1"):
        record = get_model(con, ref)
        spec = LabelSpec.from_dict(record.label_spec)
        expected = make_labels(candles, spec, unit=UNIT)
        expected.index = pd.DatetimeIndex(candles["ts"])
        rows = load_live_predictions(con, record.id, market=MARKET, unit=UNIT)
        assert len(rows) == 300
        want = expected.loc[pd.DatetimeIndex(rows["ts"])].to_numpy()
        resolved = rows["label_resolved"].notna().to_numpy()
        # resolved exactly where the label function defines the label (its horizon's candle
        # is stored), pending where it does not: the newest `horizon` candles
        assert (resolved == ~np.isnan(want)).all()
        assert (~resolved).sum() == spec.horizon
        got = rows.loc[resolved, "label_resolved"].map(CLASSES.index).to_numpy()
        assert (got == want[resolved]).all()
        close = candles.set_index("ts")["close"]
        at = close.index.get_indexer(pd.DatetimeIndex(rows.loc[resolved, "ts"]))
        np.testing.assert_allclose(
            rows.loc[resolved, "outcome_return"].to_numpy(),
            close.to_numpy()[at + spec.horizon] / close.to_numpy()[at] - 1,
            rtol=1e-12,
        )
        # the live metrics are what a batch recomputation of the same rows gives
        metrics = live_metrics(con, record.id, market=MARKET, unit=UNIT, last=300)
        scored = rows[resolved]
        predicted = np.argmax(np.stack(scored["probs"].to_list()), axis=1)
        labels = scored["label_resolved"].map(CLASSES.index).to_numpy()
        assert metrics.n_resolved == resolved.sum() and metrics.n_pending == spec.horizon
        assert metrics.accuracy == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
        assert metrics.macro_f1 == pytest.approx(
            f1_score(labels, predicted, average="macro", labels=[0, 1, 2], zero_division=0),
            abs=1e-12,
        )


async def test_an_expired_champion_stops_deciding_and_the_rule_says_why(con) -> None:
    set_settings(con, MARKET, UNIT, OpsSettings(max_age_hours=1.0))
    session = await open_managed_session(
        con, MARKET, UNIT, offline=True, replay_delay=0, replay_candles=20
    )
    await session.runner
    signals = list(session.engine.signals)
    assert len(signals) == 20
    assert all(s.source == session.engine.rule.name for s in signals)
    assert all("(fallback: expired: trained on data up to" in s.reason for s in signals)
    rows = load_live_predictions(con, get_model(con, "champ@1").id)
    assert not rows["acted"].any() and rows["fallback"].str.startswith("expired:").all()


async def test_an_input_outside_the_training_distribution_falls_back_to_the_rule(con) -> None:
    candles = load_candles(con, MARKET, UNIT)
    last = candles.iloc[-1]
    # five more minutes at ten times the price: nothing the champion ever saw
    jump = pd.DataFrame(
        {
            "market": MARKET,
            "unit": UNIT,
            "ts": [last["ts"] + pd.Timedelta(minutes=i) for i in range(1, 6)],
            **{c: [last[c] * 10] * 5 for c in ("open", "high", "low", "close")},
            "volume": [last["volume"]] * 5,
            "value": [np.nan] * 5,
        }
    )
    upsert_candles(con, jump)
    session = await open_managed_session(
        con, MARKET, UNIT, offline=True, replay_delay=0, replay_candles=10
    )
    await session.runner
    signals = list(session.engine.signals)
    before, after = signals[:5], signals[5:]
    assert all(s.source == "champ@1" for s in before)
    assert after[0].source == session.engine.rule.name
    assert "(fallback: out of distribution:" in after[0].reason


async def test_an_alias_move_seats_the_new_champion_on_the_next_candle(con) -> None:
    seats = load_seats(con, MARKET, UNIT)
    candles = load_candles(con, MARKET, UNIT)
    engine = LiveEngine(
        con, MARKET, UNIT, model=seats.champion, shadows=list(seats.shadows), mode="replay"
    )
    engine.prime(candles.iloc[:-3])
    cycle = ModelOpsCycle(engine)
    said: list[str] = []
    engine.subscribe(lambda e: said.append(e.text) if isinstance(e, StatusEvent) else None)
    rows = candles.iloc[-3:].to_dict("records")
    await engine.on_closed(rows[0])
    assert cycle.run_once().reseated is False  # nothing moved
    move(con, get_model(con, "chall@1"), "champion", by="user", reason="test")
    assert cycle.run_once().reseated is True
    assert engine.model is not None and engine.model.record.ref == "champ@1"  # not yet
    await engine.on_closed(rows[1])
    await engine.on_closed(rows[2])
    assert [s.source for s in engine.signals] == ["champ@1", "chall@1", "chall@1"]
    assert engine.shadows == []  # the old champion holds no alias now
    assert any(text.startswith("models seated: champion chall@1") for text in said)


@pytest.fixture
def ws(home: Path) -> Iterator[Workstation]:
    with Workstation() as workstation:
        yield workstation


def test_a_drift_event_starts_a_retrain_that_registers_a_challenger(ws: Workstation) -> None:
    """The champion's resolved predictions turn from mostly right to mostly wrong: ADWIN
    raises a drift event, and with retrain_on_drift the cycle starts a retrain whose model
    becomes a challenger, by 'drift'."""
    con = ws.con()
    champ = get_model(con, "champ@1")
    set_settings(con, MARKET, UNIT, OpsSettings(retrain_on_drift=True))
    candles = load_candles(con, MARKET, UNIT)
    n = 3000
    rng = np.random.default_rng(11)
    right = np.r_[rng.random(n // 2) < 0.7, rng.random(n // 2) < 0.2]
    frame = pd.DataFrame(
        {
            "ts": candles["ts"].iloc[:n].to_numpy(),
            "market": MARKET,
            "unit": UNIT,
            "model_id": champ.id,
            "role": "champion",
            "mode": "replay",
            "probs": [[0.1, 0.2, 0.7]] * n,
            "action": "buy",
            "acted": True,
        }
    )
    insert_live_predictions(con, frame)
    con.register(
        "_truth", pd.DataFrame({"ts": frame["ts"], "label": np.where(right, "buy", "sell")})
    )
    con.execute(
        "UPDATE predictions p SET label_resolved = t.label, outcome_return = 0.0,"
        " resolved_at = now() FROM _truth t WHERE p.ts = t.ts AND p.source = 'live'"
    )
    seats = load_seats(con, MARKET, UNIT)
    engine = LiveEngine(con, MARKET, UNIT, model=seats.champion, mode="replay")
    cycle = ModelOpsCycle(engine, retrain=ws._retrain_words)
    report = cycle.run_once()
    assert report.drift_events >= 1
    events = drift_events(con, market=MARKET, unit=UNIT)
    change = frame["ts"].iloc[n // 2]
    assert all(e.ts >= change for e in events)  # none while the champion was right
    event = events[-1]  # the first
    assert event.stream == "correctness" and event.detector == "adwin"
    assert event.before_mean > event.after_mean + 0.05
    assert report.retrains and report.retrains[0].startswith("retrain started: run ")
    assert str(event.action).startswith("retrain started: run ")
    run = int(report.retrains[0].split()[3])
    deadline = time.monotonic() + 180
    while (status := ws.train_status(TrainStatusRequest(run=run))).status in ("queued", "running"):
        assert time.monotonic() < deadline, "the retrain did not finish in time"
        time.sleep(0.1)
    assert status.status == "finished", status.error
    newest = alias_history(con, MARKET, UNIT)[0]
    assert (newest.alias, newest.moved_by) == ("challenger", "drift")
    assert newest.reason is not None and newest.reason.startswith("drift: correctness")
    # a second cycle sees no new rows: no second event, no second retrain
    assert cycle.run_once().drift_events == 0


async def test_the_gate_promotes_a_clearly_better_challenger_on_the_next_candle(con) -> None:
    """Both models' predictions on the same real candles, the challenger's far better: the
    cycle resolves them, the gate (auto_promote) moves the champion alias by 'gate', and the
    engine decides with the new champion from its next candle on."""
    champ, chall = get_model(con, "champ@1"), get_model(con, "chall@1")
    set_settings(
        con,
        MARKET,
        UNIT,
        OpsSettings.from_dict(
            {"auto_promote": True, "gate": {"min_resolved": 100, "min_trades": 10}}
        ),
    )
    candles = load_candles(con, MARKET, UNIT)
    spec = LabelSpec.from_dict(champ.label_spec)
    truth = make_labels(candles, spec, unit=UNIT).to_numpy()
    played = np.arange(len(candles) - 400, len(candles) - spec.horizon)  # out of sample
    rng = np.random.default_rng(5)
    rows = []
    for model, role, skill in ((champ, "champion", 0.0), (chall, "challenger", 0.8)):
        for i in played:
            probs = rng.dirichlet([1.0, 1.0, 1.0]) * (1 - skill)
            probs[int(truth[i])] += skill
            action = CLASSES[int(np.argmax(probs))]
            rows.append(
                {
                    "ts": candles["ts"].iloc[i],
                    "market": MARKET,
                    "unit": UNIT,
                    "model_id": model.id,
                    "role": role,
                    "mode": "replay",
                    "probs": list(probs),
                    "action": action,
                    "acted": role == "champion",
                }
            )
    insert_live_predictions(con, pd.DataFrame(rows))
    seats = load_seats(con, MARKET, UNIT)
    engine = LiveEngine(
        con, MARKET, UNIT, model=seats.champion, shadows=list(seats.shadows), mode="replay"
    )
    engine.prime(candles.iloc[:-2])
    cycle = ModelOpsCycle(engine)
    report = cycle.run_once()
    assert report.resolved == 2 * len(played)
    assert report.moved and report.reseated, report.gate
    newest = alias_history(con, MARKET, UNIT)[0]
    assert (newest.alias, newest.model_ref, newest.moved_by) == ("champion", "chall@1", "gate")
    assert newest.reason  # the gate's numbers, in words
    for row in candles.iloc[-2:].to_dict("records"):
        await engine.on_closed(row)
    assert [s.source for s in engine.signals] == ["chall@1", "chall@1"]
