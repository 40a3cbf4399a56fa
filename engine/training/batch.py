"""Batch inference: a registered model over a time range of stored candles, vectorised, stored
in `predictions`; and the model's signals as backtest actions (the same threshold rule as the
live engine's `threshold_action`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import LoadedModel, load_ref
from engine.research.features import compute_features
from engine.research.labels import LabelSpec, make_label_frame
from engine.trading.backtest import DEFAULT_FEE, BacktestReport, backtest, baseline_results
from engine.trading.strategies import SmaCross, actions_from_probs, sma_cross_actions
from engine.upbit.markets import check_market, unit_minutes
from models import CLASSES, Model
from store.candles import load_candles


def predict_rows(model: Model, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), 3) probabilities for `rows` (ascending positions in X); sequence models
    read their `context` rows before each, as in live serving."""
    rows = np.asarray(rows)
    if len(rows) == 0:
        return np.empty((0, 3))
    first = max(int(rows[0]) - model.context, 0)
    probs = model.predict_proba(X[first : int(rows[-1]) + 1])
    return probs[rows - first]


def predict_values(model: Model, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Like predict_rows for `model.predict` (regressors: forward log returns)."""
    rows = np.asarray(rows)
    first = max(int(rows[0]) - model.context, 0)
    return np.asarray(model.predict(X[first : int(rows[-1]) + 1]))[rows - first]


def candle_actions(candles: pd.DataFrame, ts: pd.DatetimeIndex, actions: np.ndarray) -> np.ndarray:
    """Per candle of `candles`, the action decided at that candle's ts; hold where the model
    made no prediction (warm-up, dropped rows)."""
    out = np.zeros(len(candles), dtype=np.int8)
    position = pd.DatetimeIndex(candles["ts"]).get_indexer(ts)
    found = position >= 0
    out[position[found]] = actions[found]
    return out


@dataclass
class Predictions:
    model: str
    model_id: int
    market: str
    unit: str
    frame: pd.DataFrame  # ts, p_sell, p_hold, p_buy, action, label
    stored: int
    out: Path | None
    note: str | None = None  # set when a bad artifact made it load the previous version


def _lookback_start(
    loaded: LoadedModel,
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    start: datetime | None,
) -> datetime | None:
    if start is None:
        return None
    need = loaded.history_needed
    rows = con.execute(
        "SELECT ts FROM candles WHERE market = ? AND unit = ? AND ts < ? ORDER BY ts DESC"
        " LIMIT 1 OFFSET ?",
        [market, unit, start, need - 1],
    ).fetchall()
    return rows[0][0] if rows else None


def predict_range(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    market: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    out: Path | None = None,
    store: bool = True,
    threshold: float = 0.5,
    preloaded: tuple[LoadedModel, str | None] | None = None,
) -> Predictions:
    """Probabilities of model `ref` for every stored candle of `market` with start <= ts < end
    whose features are defined (warm-up read from earlier candles). Stored in `predictions`
    as source 'batch' (replacing earlier batch rows of the same model, market and range; the
    live log's rows are never touched) and, with `out`, written to
    Parquet or CSV. `label` is the resolved label where the candles after it are stored.
    `preloaded`: what `load_ref(con, ref)` gave a caller already (the artifact is read once)."""
    loaded, note = preloaded or load_ref(con, ref)
    record = loaded.record
    market = check_market(market or record.market)
    unit = record.unit
    label_spec = LabelSpec.from_dict(record.label_spec)
    # the candles after `end` that resolve the last labels; features never read them
    width = pd.Timedelta(minutes=unit_minutes(unit))
    beyond = None if end is None else pd.Timestamp(end) + width * label_spec.horizon
    candles = load_candles(
        con, market, unit, _lookback_start(loaded, con, market, unit, start), beyond
    )
    if candles.empty:
        raise ValueError(
            f"no {market} unit {unit} candles in the store for that range;"
            f" run `upquant data fetch {market} --unit {unit}` first"
        )
    features = compute_features(candles, loaded.feature_spec, unit=unit)
    if loaded.columns and list(features.columns) != loaded.columns:
        raise ValueError(f"{record.ref} was trained on other feature columns than its spec makes")
    defined = features.notna().all(axis=1).to_numpy()
    X = features.to_numpy(dtype=np.float32)
    in_range = np.ones(len(features), dtype=bool)
    if start is not None:
        in_range &= features.index >= pd.Timestamp(start)
    if end is not None:
        in_range &= features.index < pd.Timestamp(end)
    rows = np.flatnonzero(defined & in_range)
    # a sequence model's window must not reach back into undefined warm-up rows
    rows = rows[rows >= np.flatnonzero(defined)[0] + loaded.context] if defined.any() else rows
    if len(rows) == 0:
        raise ValueError(f"no candle in that range has every feature defined for {record.ref}")
    probs = predict_rows(loaded.model, X, rows)
    labels = make_label_frame(candles, label_spec, unit=unit)
    label_values = labels["label"].to_numpy()[rows]
    if label_spec.is_classification:
        resolved = [CLASSES[int(v)] if np.isfinite(v) else None for v in label_values.astype(float)]
    else:
        resolved = [f"{v:.6g}" if np.isfinite(v) else None for v in label_values.astype(float)]
    frame = pd.DataFrame(
        {
            "ts": features.index[rows],
            "p_sell": probs[:, 0],
            "p_hold": probs[:, 1],
            "p_buy": probs[:, 2],
            "action": pd.Categorical.from_codes(
                actions_from_probs(probs, threshold) + 1, categories=list(CLASSES)
            ),
            "label": resolved,
        }
    )
    stored = _store(con, record.id, market, unit, frame, probs) if store else 0
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            frame.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            raise ValueError(f"--out {out} must end in .parquet or .csv")
    return Predictions(record.ref, record.id, market, unit, frame, stored, out, note)


def _store(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    market: str,
    unit: str,
    frame: pd.DataFrame,
    probs: np.ndarray,
) -> int:
    rows = pd.DataFrame(
        {
            "ts": frame["ts"],
            "market": market,
            "model_id": model_id,
            "probs": list(probs.astype(np.float64)),
            "label_resolved": frame["label"],
            "unit": unit,
        }
    )
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM predictions WHERE source = 'batch' AND model_id = ? AND market = ?"
            " AND unit = ? AND ts BETWEEN ? AND ?",
            [model_id, market, unit, frame["ts"].iloc[0], frame["ts"].iloc[-1]],
        )
        con.register("_predictions", rows)
        con.execute(
            "INSERT INTO predictions (ts, market, model_id, probs, label_resolved, unit, source)"
            " SELECT ts, market, model_id, probs, label_resolved, unit, 'batch' FROM _predictions"
        )
        con.unregister("_predictions")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return len(rows)


def model_backtest(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    *,
    market: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
    slippage_bps: float = 0.0,
    fast: int = 10,
    slow: int = 30,
    preloaded: tuple[LoadedModel, str | None] | None = None,
) -> BacktestReport:
    """Backtest model `ref`'s signals (confidence `threshold`) on stored candles, beside
    sma-cross, buy-and-hold and no-trade; the predictions are stored as by `predict_range`
    (`preloaded` as there)."""
    predictions = predict_range(
        con, ref, market, start, end, threshold=threshold, preloaded=preloaded
    )
    unit = predictions.unit
    candles = load_candles(con, predictions.market, unit, predictions.frame["ts"].iloc[0], end)
    probs = predictions.frame[["p_sell", "p_hold", "p_buy"]].to_numpy()
    actions = candle_actions(
        candles, pd.DatetimeIndex(predictions.frame["ts"]), actions_from_probs(probs, threshold)
    )
    rule = SmaCross(fast=fast, slow=slow)
    results = {
        predictions.model: backtest(
            candles,
            actions,
            fee=fee,
            slippage_bps=slippage_bps,
            unit=unit,
            name=predictions.model,
        ),
        rule.name: backtest(
            candles,
            sma_cross_actions(candles["close"].to_numpy(), fast, slow),
            fee=fee,
            slippage_bps=slippage_bps,
            unit=unit,
            name=rule.name,
        ),
        **baseline_results(candles, fee=fee, slippage_bps=slippage_bps, unit=unit),
    }
    return BacktestReport.over(
        candles,
        results,
        market=predictions.market,
        unit=unit,
        strategy=predictions.model,
        note=predictions.note,
    )
