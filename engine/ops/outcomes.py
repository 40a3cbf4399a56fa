"""Delayed outcomes of the live prediction log: once a live prediction's label horizon has
passed, its label (sell/hold/buy by the model's OWN label spec) and the close-to-close return
over that horizon are filled in from the stored candles.

A row resolves exactly when the label function (`engine.research.labels.make_labels`) defines
its label on the stored candles: the horizon's candle is stored and the window crosses no gap
longer than the spec's `max_gap` (nor, with a `vol_window`, does the trailing window). Never
before; a row whose window crosses such a gap, or whose own candle is not stored, stays
pending (the label function never defines it). Regression models are labelled as they turn
their forecast into classes: the forward log return beyond +/- the model's `threshold`
parameter (the label spec's threshold when the model has none; models.base.return_to_proba).

Cost: one read of each series' candles per call, the labels of each model over them
(vectorised, on slices of the candles around the pending rows), and one `UPDATE ... FROM`
of every resolved row at once, joined on row ids.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.research.labels import BUY, HOLD, SELL, LabelSpec, make_labels
from models import CLASSES
from store.candles import load_candles
from store.db import bump_writes
from store.registry import ModelRecord, get_model


@dataclass(frozen=True)
class ResolveReport:
    """What one resolve call did: rows it resolved, live rows still pending afterwards (of
    the models and markets it looked at), and the (model, market, unit) groups with pending
    rows it examined; `unknown_models`: ids whose rows stay pending because the registry no
    longer has the model (its label spec is gone)."""

    resolved: int
    pending: int
    groups: int
    seconds: float
    unknown_models: tuple[int, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["unknown_models"] = list(self.unknown_models)
        return out


def regression_threshold(record: ModelRecord, spec: LabelSpec) -> float:
    """The threshold a regression model's forecast is classed against (its `threshold`
    parameter, as models.base.return_to_proba uses it; else the label spec's)."""
    value = record.params.get("threshold") if isinstance(record.params, dict) else None
    return float(spec.threshold if value is None else value)


def label_outcomes(
    candles: pd.DataFrame,
    spec: LabelSpec,
    *,
    unit: str,
    regression_threshold: float | None = None,
) -> pd.DataFrame:
    """Per candle (indexed by ts): `label` (class index SELL/HOLD/BUY as float, NaN where the
    label function leaves it undefined) and `outcome_return` (close[t+h] / close[t] - 1, the
    simple close-to-close return over the spec's horizon; NaN where the label is)."""
    raw = make_labels(candles, spec, unit=unit).to_numpy(dtype=np.float64)
    if spec.is_classification:
        label = raw
    else:
        threshold = spec.threshold if regression_threshold is None else regression_threshold
        with np.errstate(invalid="ignore"):
            classed = np.where(raw > threshold, BUY, np.where(raw < -threshold, SELL, HOLD))
        label = np.where(np.isnan(raw), np.nan, classed)
    close = candles["close"].to_numpy(np.float64)
    h = spec.horizon
    ahead = np.full(len(close), np.nan)
    if len(close) > h:
        ahead[:-h] = close[h:] / close[:-h] - 1.0
    outcome = np.where(np.isnan(label), np.nan, ahead)
    return pd.DataFrame(
        {"label": label, "outcome_return": outcome}, index=pd.DatetimeIndex(candles["ts"])
    )


def _pending_groups(
    con: duckdb.DuckDBPyConnection,
    model_ids: Sequence[int] | None,
    markets: Sequence[str] | None,
) -> list[tuple[int, str, str, pd.Timestamp]]:
    """(model_id, market, unit, earliest pending ts) of every group with pending live rows."""
    where, params = _filters(model_ids, markets)
    rows = con.execute(
        "SELECT model_id, market, unit, min(ts) FROM predictions"
        f" WHERE {where} AND label_resolved IS NULL GROUP BY ALL ORDER BY ALL",
        params,
    ).fetchall()
    return [(int(m), str(k), str(u), pd.Timestamp(t)) for m, k, u, t in rows]


def _filters(
    model_ids: Sequence[int] | None, markets: Sequence[str] | None
) -> tuple[str, list[object]]:
    where = ["source = 'live'"]
    params: list[object] = []
    if model_ids is not None:
        where.append("list_contains(?, model_id)")
        params.append([int(m) for m in model_ids])
    if markets is not None:
        where.append("list_contains(?, market)")
        params.append([str(m) for m in markets])
    return " AND ".join(where), params


def _pending_rows(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, model_ids: list[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per model, the pending live rows of one series, ascending: (epoch microseconds of
    their ts, their row ids), read in one scan for all its models."""
    found = con.execute(
        "SELECT model_id, epoch_us(ts) AS us, rowid AS row FROM predictions"
        " WHERE source = 'live' AND label_resolved IS NULL AND market = ? AND unit = ?"
        " AND list_contains(?, model_id) ORDER BY model_id, us",
        [market, unit, model_ids],
    ).fetchnumpy()
    ids = np.asarray(found["model_id"], dtype=np.int64)
    us = np.asarray(found["us"], dtype=np.int64)
    rows = np.asarray(found["row"], dtype=np.int64)
    out = {}
    for model_id in model_ids:
        lo, hi = np.searchsorted(ids, [model_id, model_id + 1])
        out[model_id] = us[lo:hi], rows[lo:hi]
    return out


# Pending rows far apart (a row left pending by a gap long ago, and the newest rows) are
# labelled on separate slices of the candles, so a call costs what its pending rows need, not
# the whole series since the oldest of them; slices closer than this many candles are one.
MERGE_CANDLES = 4096


def _outcomes_at(
    candles: pd.DataFrame, pending: np.ndarray, spec: LabelSpec, unit: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(positions in `pending`, class index, outcome return) of the `pending` rows (epoch
    microseconds, ascending) whose label the candles define; None when none does. Each row is labelled on a
    slice holding its label's whole reach (the trailing window before it, the horizon after
    it), which gives the value the whole series gives: labels are window-exact."""
    candle_us = pd.DatetimeIndex(candles["ts"]).as_unit("us").asi8
    n = len(candle_us)
    at = np.searchsorted(candle_us, pending)
    stored = at < n
    stored[stored] = candle_us[at[stored]] == pending[stored]
    which = np.flatnonzero(stored)
    at = at[stored]  # positions of the pending rows' own candles; the others stay pending
    if len(at) == 0:
        return None
    low = np.maximum(at - spec.lookback() - 1, 0)
    high = np.minimum(at + spec.horizon, n - 1)
    reach = np.maximum.accumulate(high)
    cuts = np.flatnonzero(low[1:] > reach[:-1] + MERGE_CANDLES) + 1
    bounds = np.concatenate([[0], cuts, [len(at)]])
    label = np.full(len(at), np.nan)
    outcome = np.full(len(at), np.nan)
    for first, last in itertools.pairwise(bounds):
        a, b = int(low[first]), int(reach[last - 1]) + 1
        sliced = label_outcomes(candles.iloc[a:b], spec, unit=unit, regression_threshold=threshold)
        rows = at[first:last] - a
        label[first:last] = sliced["label"].to_numpy()[rows]
        outcome[first:last] = sliced["outcome_return"].to_numpy()[rows]
    known = ~np.isnan(label)
    if not known.any():
        return None
    return which[known], label[known].astype(np.int8), outcome[known]


def _series_start(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, first: pd.Timestamp, lookback: int
) -> pd.Timestamp | None:
    """The ts `lookback` stored candles before `first` (None: from the series' start)."""
    if lookback <= 0:
        return first
    rows = con.execute(
        "SELECT ts FROM candles WHERE market = ? AND unit = ? AND ts < ? ORDER BY ts DESC"
        " LIMIT 1 OFFSET ?",
        [market, unit, first.to_pydatetime(), lookback - 1],
    ).fetchall()
    return pd.Timestamp(rows[0][0]) if rows else None


def resolve_outcomes(
    con: duckdb.DuckDBPyConnection,
    *,
    model_ids: Sequence[int] | None = None,
    markets: Sequence[str] | None = None,
    now: datetime | None = None,
) -> ResolveReport:
    """Resolve every pending live prediction (of `model_ids` / `markets` when given) whose
    label the stored candles now define: sets label_resolved, outcome_return and resolved_at
    (`now`, default the current UTC time) in one UPDATE. Idempotent: resolved rows are never
    touched again.

    The update finds its rows by the row ids read before it, checked against each row's
    model, market, unit and ts: a row whose id changed in between (a checkpoint compacting
    the table after deletes) is left pending for the next call, never mistaken."""
    return _resolve(con, model_ids, markets, now)


def _resolve(
    con: duckdb.DuckDBPyConnection,
    model_ids: Sequence[int] | None,
    markets: Sequence[str] | None,
    now: datetime | None,
) -> ResolveReport:
    started = time.perf_counter()
    groups = _pending_groups(con, model_ids, markets)
    records: dict[int, tuple[LabelSpec, float] | None] = {}
    by_series: dict[tuple[str, str], list[tuple[int, pd.Timestamp]]] = {}
    for model_id, market, unit, first in groups:
        if model_id not in records:
            try:
                record = get_model(con, model_id)
            except KeyError:
                records[model_id] = None
            else:
                spec = LabelSpec.from_dict(record.label_spec)
                records[model_id] = (spec, regression_threshold(record, spec))
        if records[model_id] is not None:
            by_series.setdefault((market, unit), []).append((model_id, first))
    parts: list[tuple[np.ndarray, ...]] = []  # row ids, model ids, market, unit, us, label, return
    market_names = sorted({market for market, _ in by_series})
    unit_names = sorted({unit for _, unit in by_series})
    for (market, unit), members in by_series.items():
        first = min(ts for _, ts in members)
        # the label at t reads the trailing volatility's window (plus the return before it)
        lookback = max(_spec(records, m).lookback() for m, _ in members)
        start = _series_start(con, market, unit, first, lookback + 1 if lookback else 0)
        candles = load_candles(con, market, unit, start)
        if candles.empty:
            continue
        waiting = _pending_rows(con, market, unit, [m for m, _ in members])
        for model_id, _ in members:
            spec, threshold = records[model_id] or (LabelSpec(), 0.0)
            us, row_ids = waiting[model_id]
            known = _outcomes_at(candles, us, spec, unit, threshold)
            if known is None:
                continue
            which, label, outcome = known
            n = len(which)
            parts.append(
                (
                    row_ids[which],
                    np.full(n, model_id, dtype=np.int64),
                    np.full(n, market_names.index(market), dtype=np.int16),
                    np.full(n, unit_names.index(unit), dtype=np.int16),
                    us[which],
                    label,
                    outcome,
                )
            )
    resolved = 0
    if parts:
        columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
        # in row id order: whichever side of the join probes, the update then gets its row
        # ids in storage order (scattered, DuckDB 2.0 takes ~30 s for 1M of them, not ~0.2 s)
        order = np.argsort(columns[0], kind="stable")
        row_id, model, market_code, unit_code, us, label, outcome = (c[order] for c in columns)
        batch = pd.DataFrame(
            {
                "row_id": row_id,
                "model_id": model,
                "market": pd.Categorical.from_codes(market_code, categories=market_names),
                "unit": pd.Categorical.from_codes(unit_code, categories=unit_names),
                "us": us,
                "label": label,
                "outcome_return": outcome,
            }
        )
        stamp = now or datetime.now(UTC)
        con.register("_outcome_batch", batch)
        try:
            done = con.execute(
                "UPDATE predictions AS p SET label_resolved = ?[o.label + 1],"
                " outcome_return = o.outcome_return, resolved_at = ?"
                " FROM _outcome_batch AS o"
                " WHERE p.rowid = o.row_id AND p.label_resolved IS NULL"
                " AND p.model_id = o.model_id AND p.market = o.market::VARCHAR"
                " AND p.unit = o.unit::VARCHAR AND epoch_us(p.ts) = o.us",
                [list(CLASSES), stamp],
            ).fetchall()
        finally:
            con.unregister("_outcome_batch")
        bump_writes()
        resolved = int(done[0][0]) if done else 0
    where, params = _filters(model_ids, markets)
    pending = con.execute(
        f"SELECT count(*) FROM predictions WHERE {where} AND label_resolved IS NULL", params
    ).fetchall()
    unknown = tuple(sorted(m for m, r in records.items() if r is None))
    return ResolveReport(
        resolved=resolved,
        pending=int(pending[0][0]) if pending else 0,
        groups=len(groups),
        seconds=time.perf_counter() - started,
        unknown_models=unknown,
    )


def _spec(records: dict[int, tuple[LabelSpec, float] | None], model_id: int) -> LabelSpec:
    found = records[model_id]
    assert found is not None
    return found[0]
