"""The live prediction log's operations in process, on a real XGBoost model trained on real
candles whose live rows are its own predictions: `outcomes_resolve` resolves what the stored
candles cover, `prediction_log` answers the rows newest first, and `model_metrics` carries
the live metrics (null before any live row)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.ops.live_metrics import live_metrics
from engine.service import NotFound, Workstation
from engine.service.outcomes import (
    LiveMetricsInfo,
    OutcomesResolveRequest,
    PredictionLogRequest,
)
from engine.service.registry import ModelMetricsRequest, ModelRefRequest
from engine.training.batch import predict_range
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from store.predictions import insert_live_predictions
from tests.conftest import shared_candles

NAME = "live-xgb"
LIVE_ROWS = 100  # on the newest candles; the last `horizon` (10) of them cannot resolve yet


def live_store(home: Path) -> None:
    """A tiny XGBoost champion of KRW-BTC 1m (3000 real candles) and LIVE_ROWS live rows
    made of its own batch probabilities on the newest candles, as the live engine logs them
    (champion, acted on its buys and sells), outcomes not resolved yet."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
        report = train_model(
            con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 5, "device": "cpu"}, name=NAME
        )
        frame = predict_range(con, report.model.ref, store=False, threshold=0.4).frame
        frame = frame.iloc[-LIVE_ROWS:]
        probs = frame[["p_sell", "p_hold", "p_buy"]].to_numpy()
        action = frame["action"].astype(str).to_numpy()
        rng = np.random.default_rng(5)
        live = pd.DataFrame(
            {
                "ts": frame["ts"].to_numpy(),
                "market": "KRW-BTC",
                "unit": "1",
                "model_id": report.model.id,
                "role": "champion",
                "mode": "replay",
                "probs": list(probs),
                "action": action,
                "confidence": probs.max(axis=1),
                "threshold": 0.4,
                "acted": action != "hold",
                "latency_ms": rng.gamma(2.0, 2.0, LIVE_ROWS),
                "fallback": None,
            }
        )
        assert insert_live_predictions(con, live) == LIVE_ROWS
        con.close()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("live")
    live_store(home)
    return home


@pytest.fixture
def ws(stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workstation]:
    home = tmp_path / "home"
    shutil.copytree(stored, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    with Workstation() as workstation:
        yield workstation


def test_resolve_log_and_metrics(ws: Workstation) -> None:
    before = ws.model_metrics(ModelMetricsRequest(model=NAME))
    assert before.live is not None and before.live.n_resolved == 0
    assert before.live.n_pending == LIVE_ROWS and before.live.accuracy is None
    log = ws.prediction_log(PredictionLogRequest(model=NAME, limit=5))
    assert len(log.rows) == 5 and log.rows[0].ts > log.rows[-1].ts  # newest first
    assert all(r.label_resolved is None and r.probs is not None for r in log.rows)

    report = ws.outcomes_resolve(OutcomesResolveRequest(models=[NAME]))
    assert (report.resolved, report.pending, report.groups) == (LIVE_ROWS - 10, 10, 1)
    assert ws.outcomes_resolve(OutcomesResolveRequest(markets=["KRW-BTC"])).resolved == 0

    after = ws.model_metrics(ModelMetricsRequest(model=f"{NAME}@champion"))
    live = after.live
    assert live is not None and after.test  # stored metrics still there
    assert live.n_resolved == LIVE_ROWS - 10 and live.accuracy is not None
    assert sum(b.count for b in live.calibration) == live.n_scored == LIVE_ROWS - 10
    assert live.latency_p50_ms is not None and live.fallbacks == 0
    assert live == LiveMetricsInfo.of(live_metrics(ws.con(), after.model_id))
    json.dumps(after.model_dump(mode="json"), allow_nan=False)  # strict JSON: no NaN
    window = ws.model_metrics(ModelMetricsRequest(model=NAME, last=20)).live
    assert window is not None and window.n_predictions == 20 and window.n_pending == 10
    # a plain model reference (no window) still answers, with the default window
    assert ws.model_metrics(ModelRefRequest(model=NAME)).live == live

    resolved = ws.prediction_log(PredictionLogRequest(model=NAME, resolved=True, limit=1000))
    pending = ws.prediction_log(PredictionLogRequest(model=NAME, resolved=False))
    assert len(resolved.rows) == LIVE_ROWS - 10 and len(pending.rows) == 10
    assert max(r.ts for r in resolved.rows) < min(r.ts for r in pending.rows)
    first = resolved.rows[0]
    assert first.label_resolved in ("sell", "hold", "buy") and first.outcome_return is not None
    assert first.resolved_at is not None and first.role == "champion"


def test_unknown_model_and_no_live_rows(ws: Workstation) -> None:
    with pytest.raises(NotFound):
        ws.prediction_log(PredictionLogRequest(model="nope"))
    with pytest.raises(NotFound):
        ws.outcomes_resolve(OutcomesResolveRequest(models=["nope"]))
    con = ws.con()
    con.execute("DELETE FROM predictions WHERE source = 'live'")
    assert ws.model_metrics(ModelMetricsRequest(model=NAME)).live is None
    assert ws.prediction_log(PredictionLogRequest(model=NAME)).rows == []
