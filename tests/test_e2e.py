"""End to end: fake Upbit → `data fetch` → `train` → replay through the engine → signals
stored → the workstation shows them. Every part is real; Upbit is the fake on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store.db import connect
from store.signals import load_signals
from tests.conftest import DATA
from tests.fake_upbit import FakeUpbit, load_csv_candles
from tests.tui.test_cli import upquant
from tests.tui.test_tui import settle
from tui.app import UpquantApp
from tui.fmt import fmt_time
from tui.widgets import PredictionPanel, SessionBanner, SignalLog

ROWS = 1500
REPLAYED = 300  # the newest stored candles the workstation replays


@pytest.mark.slow
async def test_fetch_train_replay_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    candles = load_csv_candles(DATA / "KRW-BTC_1m.csv", "KRW-BTC").head(ROWS)
    first, last = candles["ts"].iloc[0], candles["ts"].iloc[-1]
    with FakeUpbit(candles).run_in_thread() as fake:
        fetched = upquant(
            tmp_path, "data", "fetch", "KRW-BTC", "--unit", "1",
            "--since", first.isoformat(), "--until", (last + (candles["ts"].iloc[1] - first)).isoformat(),
            env=fake.env(),
        )
        assert fetched.returncode == 0, fetched.stderr
        assert f"{ROWS:,} new candles stored" in fetched.stdout
        assert fake.requests["/v1/candles/minutes/1"] >= ROWS // 200
        assert fake.rate_limited == 0

    trained = upquant(tmp_path, "train", "xgboost", "KRW-BTC", "--unit", "1", "--n-estimators", "30", "--json")
    assert trained.returncode == 0, trained.stderr
    report = json.loads(trained.stdout)
    assert report["status"] == "champion"

    monkeypatch.setenv("UPQUANT_HOME", str(tmp_path))
    con = connect()
    app = UpquantApp(con, "KRW-BTC", "1", offline=True, replay_delay=0, replay_candles=REPLAYED)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.session is not None and app.session.mode == "replay"
        engine = app.session.engine
        replayed = REPLAYED
        stored = load_signals(con, "KRW-BTC", last=10_000)
        assert len(stored) == replayed == len(engine.signals)
        assert set(stored["mode"]) == {"replay"}
        # the champion decides every candle but one whose input lies outside its training
        # distribution (the dissimilarity gate: the rule decides, saying so)
        ruled = stored[stored["source"] != report["model"]]
        assert len(ruled) <= replayed // 100, ruled["reason"].value_counts().to_dict()
        assert ruled["reason"].str.contains(r"\(fallback: out of distribution: ").all()
        log = app.screen.query_one(SignalLog)
        assert log.row_count == min(replayed, SignalLog.MAX_ROWS)
        newest = stored.iloc[-1]
        assert log.get_row_at(log.row_count - 1)[0] == fmt_time(newest["ts"], fmt="%H:%M")  # KST
        assert str(log.get_row_at(log.row_count - 1)[1]) == newest["action"]
        assert str(log.get_row_at(log.row_count - 1)[3]) == report["model"]
        panel = app.screen.query_one(PredictionPanel)
        assert panel.model_ref == report["model"] and panel.probs is not None
        assert "REPLAY" in app.screen.query_one(SessionBanner).text
    con.close()
