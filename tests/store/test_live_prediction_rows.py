"""The live engine's small-batch insert of its prediction log stores exactly what the frame
insert stores: the same values and nulls, duplicates skipped, a repeat of a candle nothing."""

from __future__ import annotations

import math

import pandas as pd

from store.predictions import (
    SMALL_BATCH,
    insert_live_prediction_rows,
    insert_live_predictions,
)

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _row(i: int, market: str, answered: bool) -> dict[str, object]:
    return {
        "ts": T0 + pd.Timedelta(minutes=i), "market": market, "unit": "1", "model_id": 1 + i % 2,
        "role": "champion" if i % 2 else "challenger", "mode": "live",
        "probs": [0.2, 0.3, 0.5] if answered else None, "action": "buy" if answered else "hold",
        "confidence": 0.5 if answered else math.nan, "threshold": 0.45, "acted": answered,
        "latency_ms": 1.25 + i, "fallback": None if answered else "inference timed out after 1.0s",
    }


def _stored(con, market: str) -> list[tuple[object, ...]]:
    return con.execute(
        "SELECT ts, unit, model_id, role, mode, probs, action, confidence, threshold, acted,"
        " latency_ms, fallback, source FROM predictions WHERE market = ? ORDER BY ts, model_id",
        [market],
    ).fetchall()


def test_the_small_batch_insert_stores_what_the_frame_insert_stores(con) -> None:
    rows = [_row(i, "KRW-AAA", answered=i % 3 != 0) for i in range(6)]
    assert insert_live_predictions(con, pd.DataFrame(rows)) == 6
    ours = [{**row, "market": "KRW-BBB"} for row in rows]
    assert insert_live_prediction_rows(con, ours[:4] + ours[:1]) == 4  # a repeat in the batch
    assert insert_live_prediction_rows(con, ours) == 2  # the first four are stored already
    assert insert_live_prediction_rows(con, ours[2:3]) == 0
    assert _stored(con, "KRW-BBB") == _stored(con, "KRW-AAA")
    nulls = [r for r in _stored(con, "KRW-BBB") if r[5] is None]
    assert len(nulls) == 2 and all(r[7] is None and r[11] for r in nulls)
    many = [_row(i, "KRW-CCC", True) for i in range(SMALL_BATCH + 3)]
    assert insert_live_prediction_rows(con, many) == SMALL_BATCH + 3  # through the frame
