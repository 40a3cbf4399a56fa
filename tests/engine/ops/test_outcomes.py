"""The live prediction log and its delayed outcomes, on real KRW-BTC candles in a real store:
a live row resolves exactly when the label function defines its label (never before), to the
label function's value under the model's own spec (fixed horizon, triple barrier with a
volatility window, regression classed at the model's threshold); rows whose window crosses a
gap, or whose candle is not stored, stay pending; replayed rows are not appended twice; a
batch predict never deletes the live log."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from engine.ops.outcomes import label_outcomes, resolve_outcomes
from engine.research.labels import LabelSpec, make_labels
from engine.training.batch import predict_range
from engine.training.train import train_model
from models import CLASSES
from store.candles import upsert_candles
from store.predictions import insert_live_predictions, load_live_predictions
from store.registry import ModelRecord, register_model
from tests.conftest import shared_candles

SPECS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # label spec, model params
    "fixed": ({"horizon": 10, "threshold": 0.0005}, {}),
    "barrier": (
        {"horizon": 7, "threshold": 0.0005, "scheme": "triple_barrier", "vol_window": 20},
        {},
    ),
    "regression": (
        {"horizon": 5, "threshold": 0.0005, "scheme": "regression"},
        {"threshold": 0.001},
    ),
}
FIRST, LAST = 100, 300  # live predictions on candles[FIRST:LAST]


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return shared_candles("KRW-BTC_1m.csv", 400)


def register(con: duckdb.DuckDBPyConnection, name: str, spec: dict, params: dict) -> ModelRecord:
    """A registry row carrying a label spec (the resolver reads nothing else of a model)."""
    return register_model(
        con,
        name=name,
        kind="xgboost",
        market="KRW-BTC",
        unit="1",
        feature_spec={},
        feature_spec_hash="-",
        label_spec=spec,
        params=params,
        artifact="none",
        sha256="-",
        size=0,
        status="candidate",
        metrics={},
    )


def live_rows(ts: pd.Series | pd.DatetimeIndex, model_id: int, **extra: Any) -> pd.DataFrame:
    n = len(ts)
    return pd.DataFrame(
        {
            "ts": list(ts),
            "market": "KRW-BTC",
            "unit": "1",
            "model_id": model_id,
            "role": "challenger",
            "mode": "replay",
            "probs": [[0.2, 0.3, 0.5]] * n,
            "action": "buy",
            "confidence": 0.5,
            "threshold": 0.5,
            "acted": False,
            "latency_ms": 1.5,
            "fallback": None,
            **extra,
        }
    )


def expected_labels(candles: pd.DataFrame, spec: dict, params: dict) -> pd.Series:
    """The label function's class names per ts (None: undefined), regression classed at the
    model's threshold as models.base.return_to_proba does."""
    label_spec = LabelSpec.from_dict(spec)
    raw = make_labels(candles, label_spec, unit="1").to_numpy()
    if not label_spec.is_classification:
        t = params["threshold"]
        raw = np.where(np.isnan(raw), np.nan, np.where(raw > t, 2, np.where(raw < -t, 0, 1)))
    return pd.Series(
        [None if np.isnan(v) else CLASSES[int(v)] for v in raw],
        index=pd.DatetimeIndex(candles["ts"]),
    )


def test_rows_resolve_exactly_at_the_horizon_to_the_label_functions_value(
    con: duckdb.DuckDBPyConnection, candles: pd.DataFrame
) -> None:
    records = {key: register(con, key, *SPECS[key]) for key in SPECS}
    for record in records.values():
        assert insert_live_predictions(con, live_rows(candles["ts"][FIRST:LAST], record.id)) == 200
    full = {key: expected_labels(candles, *SPECS[key]) for key in SPECS}
    close = candles["close"].to_numpy()
    assert resolve_outcomes(con).resolved == 0  # no candle stored: all pending

    for stored in (250, 251, 252, 320):
        upsert_candles(con, candles[:stored])
        report = resolve_outcomes(con, now=pd.Timestamp("2030-01-01", tz="UTC"))
        assert report.groups == 3
        for key, record in records.items():
            h = SPECS[key][0]["horizon"]
            rows = load_live_predictions(con, record.id)
            done = rows["label_resolved"].notna().to_numpy()
            # resolved exactly where the horizon's candle is stored, never before
            position = np.arange(FIRST, LAST)
            assert np.array_equal(done, position + h <= stored - 1), (key, stored)
            # the label function's value on the stored candles, and on the whole series
            prefix = expected_labels(candles[:stored], *SPECS[key])
            got = rows["label_resolved"][done].tolist()
            assert got == prefix[rows["ts"][done]].tolist() == full[key][rows["ts"][done]].tolist()
            at = position[done]
            assert np.allclose(rows["outcome_return"][done], close[at + h] / close[at] - 1.0)
            assert rows["outcome_return"][~done].isna().all()
            assert (rows["resolved_at"][done] == pd.Timestamp("2030-01-01", tz="UTC")).all()
        if stored == 251:  # one candle more resolves exactly one row more per model
            assert report.resolved == 3
    assert report.pending == 0
    assert resolve_outcomes(con).resolved == 0  # a resolved row is never touched again
    # every spec kind gave every class it can: the comparison above is not vacuous
    assert set(load_live_predictions(con, records["barrier"].id)["label_resolved"]) >= {
        "sell",
        "buy",
    }


def test_a_gap_leaves_the_rows_it_crosses_pending(
    con: duckdb.DuckDBPyConnection, candles: pd.DataFrame
) -> None:
    spec = {"horizon": 5, "threshold": 0.0005, "max_gap": 3}
    record = register(con, "gapped", spec, {})
    stored = pd.concat([candles[:200], candles[210:]])  # a 10-minute hole after 199
    upsert_candles(con, stored)
    insert_live_predictions(con, live_rows(candles["ts"][FIRST:LAST], record.id))
    report = resolve_outcomes(con)
    rows = load_live_predictions(con, record.id).set_index("ts")
    expected = expected_labels(stored, spec, {})
    on_stored = rows.index.isin(stored["ts"])
    # rows of stored candles: resolved exactly where the label function defines a label
    assert rows["label_resolved"][on_stored].tolist() == expected[rows.index[on_stored]].tolist()
    crossing = rows.index[on_stored & rows["label_resolved"].isna().to_numpy()]
    assert len(crossing) == 5  # the five candles before the hole look across it
    assert (crossing < candles["ts"][200]).all() and (crossing >= candles["ts"][195]).all()
    # rows of candles never stored (inside the hole) stay pending
    assert rows["label_resolved"][~on_stored].isna().all() and (~on_stored).sum() == 10
    assert report.pending == 15 and report.resolved == 200 - 15
    assert resolve_outcomes(con).resolved == 0


def test_filters_and_a_deleted_model(con: duckdb.DuckDBPyConnection, candles: pd.DataFrame) -> None:
    upsert_candles(con, candles)
    first, second = (register(con, n, {"horizon": 3, "threshold": 0.0005}, {}) for n in "ab")
    for record in (first, second):
        insert_live_predictions(con, live_rows(candles["ts"][FIRST:LAST], record.id))
    insert_live_predictions(con, live_rows(candles["ts"][FIRST:LAST], 999))  # not registered
    report = resolve_outcomes(con, model_ids=[first.id])
    assert (report.resolved, report.pending, report.groups) == (200, 0, 1)
    assert resolve_outcomes(con, markets=["KRW-ETH"]).groups == 0
    report = resolve_outcomes(con)
    assert report.resolved == 200 and report.unknown_models == (999,) and report.pending == 200


def test_label_outcomes_regression_uses_the_models_threshold(candles: pd.DataFrame) -> None:
    spec = LabelSpec(horizon=5, threshold=0.0, scheme="regression")
    wide = label_outcomes(candles, spec, unit="1", regression_threshold=0.002)["label"]
    narrow = label_outcomes(candles, spec, unit="1", regression_threshold=0.0)["label"]
    assert (wide == 1).sum() > (narrow == 1).sum()  # more holds inside a wider band
    assert wide.isna().sum() == 5 and narrow.isna().sum() == 5


def test_a_replay_appends_each_prediction_once(
    con: duckdb.DuckDBPyConnection, candles: pd.DataFrame
) -> None:
    ts = candles["ts"][:10]
    assert insert_live_predictions(con, live_rows(ts, 1)) == 10
    assert insert_live_predictions(con, live_rows(ts, 1)) == 0  # replay of the same candles
    overlapping = pd.concat([live_rows(candles["ts"][5:15], 1), live_rows(candles["ts"][14:16], 1)])
    assert insert_live_predictions(con, overlapping) == 6  # 10..15, 14 once
    assert insert_live_predictions(con, live_rows(ts, 2)) == 10  # another model: its own rows
    assert insert_live_predictions(con, live_rows(ts, 1).assign(unit="60")) == 10
    frame = load_live_predictions(con, 1, unit="1")
    assert len(frame) == 16 and frame["ts"].is_monotonic_increasing and frame["ts"].is_unique
    nothing = live_rows(candles["ts"][20:21], 1, probs=[None], fallback="error", action=None)
    assert insert_live_predictions(con, nothing) == 1
    row = load_live_predictions(con, 1, unit="1", last=1).iloc[0]
    assert row["probs"] is None and row["fallback"] == "error"
    assert load_live_predictions(con, 1, unit="1", last=3)["ts"].tolist() == list(
        candles["ts"][[14, 15, 20]]
    )
    naive = candles["ts"][14].tz_localize(None)  # a naive time is UTC
    assert len(load_live_predictions(con, 1, unit="1", since=naive)) == 3
    assert con.execute("SELECT count(*) FROM predictions WHERE source <> 'live'").fetchall() == [
        (0,)
    ]


def test_a_batch_predict_never_deletes_the_live_log(con: duckdb.DuckDBPyConnection) -> None:
    upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
    report = train_model(
        con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 5, "device": "cpu"}, name="x"
    )
    batch = predict_range(con, report.model.ref, store=True)
    ts = batch.frame["ts"][-50:]
    assert insert_live_predictions(con, live_rows(ts, report.model.id)) == 50
    before = load_live_predictions(con, report.model.id)
    again = predict_range(con, report.model.ref, store=True)  # replaces its own batch rows
    counts = dict(
        con.execute("SELECT source, count(*) FROM predictions GROUP BY source").fetchall()
    )
    assert counts == {"batch": again.stored, "live": 50}
    pd.testing.assert_frame_equal(load_live_predictions(con, report.model.id), before)


def test_pending_rows_far_apart_are_labelled_on_slices_as_on_the_series(
    con: duckdb.DuckDBPyConnection, candles: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.ops import outcomes

    monkeypatch.setattr(outcomes, "MERGE_CANDLES", 0)  # every separate reach its own slice
    spec = {**SPECS["barrier"][0], "max_gap": 3}
    record = register(con, "sliced", spec, {})
    stored = pd.concat([candles[:200], candles[210:]])
    upsert_candles(con, stored)
    insert_live_predictions(con, live_rows(candles["ts"][FIRST:LAST], record.id))
    resolve_outcomes(con)  # leaves the rows before the hole pending for good
    insert_live_predictions(con, live_rows(candles["ts"][LAST:390], record.id))
    report = resolve_outcomes(con)
    assert report.resolved == 390 - LAST
    rows = load_live_predictions(con, record.id).set_index("ts")
    on_stored = rows.index[rows.index.isin(stored["ts"])]
    expected = expected_labels(stored, spec, {})[on_stored]
    assert rows["label_resolved"][on_stored].tolist() == expected.tolist()
    # undefined: the 7 rows whose horizon crosses the hole, the 20 whose trailing window does
    assert expected.isna().sum() == 7 + 20


def test_resolve_inside_a_callers_transaction_is_part_of_it(
    con: duckdb.DuckDBPyConnection, candles: pd.DataFrame
) -> None:
    upsert_candles(con, candles)
    record = register(con, "tx", {"horizon": 3, "threshold": 0.0005}, {})
    insert_live_predictions(con, live_rows(candles["ts"][FIRST:LAST], record.id))
    con.begin()
    assert resolve_outcomes(con).resolved == 200
    con.rollback()  # the caller's choice: nothing resolved
    assert load_live_predictions(con, record.id, resolved=False).shape[0] == 200
    assert resolve_outcomes(con).resolved == 200
