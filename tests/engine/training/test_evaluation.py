"""Evaluation, batch inference and the model backtest on real candles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.training.batch import model_backtest, predict_range
from engine.training.evaluation import (
    FOLD_TRADING_METRICS,
    evaluate_model,
    reliability_table,
    walk_forward_evaluate,
)
from engine.training.train import train_model
from store.candles import upsert_candles

FAST = {"n_estimators": 20, "device": "cpu"}


def test_evaluate_reports_metrics_baselines_calibration_and_importance(
    con, btc_1m: pd.DataFrame
) -> None:
    upsert_candles(con, btc_1m.iloc[:4000])
    report = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST)
    ev = evaluate_model(con, report.model.ref)
    assert ev.rows == report.rows["test"] and not ev.overlaps_training
    assert ev.metrics["held_out"]["accuracy"] == report.metrics["test"]["accuracy"]
    assert {"ece", "brier"} <= set(ev.metrics["held_out"]) and "baseline_majority" in ev.metrics
    assert ev.reliability["rows"].sum() == ev.rows
    assert {"model", "buy_and_hold", "sma_cross"} <= set(ev.trading) and ev.importance
    early = evaluate_model(
        con, report.model.ref, start=btc_1m["ts"].iloc[500], end=btc_1m["ts"].iloc[900]
    )
    assert early.overlaps_training


def test_reliability_table_of_perfect_confidence() -> None:
    y = np.array([0, 1, 2, 2])
    table = reliability_table(y, np.eye(3)[y])
    assert list(table["rows"]) == [4] and table["gap"].iloc[0] == 0


def test_predict_stores_vectorised_predictions_and_backtests(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.iloc[:3000])
    ref = train_model(
        con, "lstm", "KRW-BTC", "1", params={"epochs": 1, "window": 8, "hidden": 8, "device": "cpu"}
    ).model.ref
    start = btc_1m["ts"].iloc[2000]
    result = predict_range(con, ref, "KRW-BTC", start)
    assert result.frame["ts"].iloc[0] == start and result.stored == len(result.frame) == 1000
    again = predict_range(con, ref, "KRW-BTC", start)  # replaces, never duplicates
    assert con.execute("SELECT count(*) FROM predictions").fetchall()[0][0] == again.stored
    labelled = result.frame["label"].notna()
    assert labelled.iloc[:-10].all() and not labelled.iloc[-10:].any()
    report = model_backtest(con, ref, start=start)
    assert next(iter(report.results)) == ref and "buy-and-hold" in report.results


def test_walk_forward_retrains_per_fold(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.iloc[:4000])
    ref = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model.ref
    wf = walk_forward_evaluate(con, ref, folds=2)
    assert len(wf.folds) == 2 and {"accuracy", "majority_accuracy"} <= set(wf.mean)
    for name in ("model", "buy_and_hold", "sma_cross", "majority_class", "no_trade"):
        assert {f"{name}_{m}" for m in FOLD_TRADING_METRICS} <= set(wf.mean), name
    for key, mean in wf.mean.items():  # mean ± std are over the folds' own figures
        values = [f[key] for f in wf.folds]
        if not np.isnan(values).all():
            assert mean == pytest.approx(np.nanmean(values))
    assert wf.folds[0]["accuracy"] != wf.folds[1]["accuracy"]  # two models, two test blocks
