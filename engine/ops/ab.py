"""A/B as shadow evaluation: champion and challengers judged on the same live candles, and the
promotion gate run on that record.

One decision per candle leaves no traffic to split, so every challenger (and shadow) predicts
in shadow on exactly the candles the champion sees (the live engine's `predictions` rows,
source 'live'). The evidence for a challenger is its resolved rows paired with the champion's
on the same candles; the gate (`engine.ops.gate.decide`) turns it into promote, keep or
insufficient. With `auto_promote` the best challenger the gate promotes takes the champion
alias (moved by 'gate', the decision's reason kept in the history); without it nothing moves
and the verdict is a recommendation.

The evidence's rules (each chosen so a skeptical reviewer cannot object to what is counted):
- Same candles: a candle counts when both models have a resolved row for it (inner join on
  ts). A candle where either model gave no answer (probs null: a fallback) is left out for
  both and counted (`champion_unanswered`, `challenger_unanswered`): charging a made-up loss
  would be arbitrary, and the count stays visible next to the verdict.
- One target: both models' probabilities are scored against the champion's resolved label,
  the task the seat is judged on. Identical label specs (the usual case: a retrain clones
  the champion's) make this each model's own label; a challenger trained on another label
  spec is scored on the champion's task, never on an easier one of its own (`same_labels`
  says so).
- Out of sample: a candle either model trained or validated on (its `train_to` /
  `validation_to` tags plus the label horizon, whose labels looked that far ahead) is left
  out and counted (`in_sample`): a replay over the training period proves nothing.
- In its role: by default a challenger's record is the rows it made as a challenger (the
  `role` column; a shadow's, as a shadow). Rows it made earlier in another role (as a shadow,
  say) are the same immutable model on the same candles, but they are often why a user made
  it a challenger: testing it on the evidence that selected it would count that evidence
  twice. The role, not a clock, decides, so a replay over stored candles is judged the same
  way as live candles. `role='*'` takes every row; `since`/`until` bound the candles.
- Trades, as engine/trading/backtest.py trades on spot Upbit (long/flat, a fee per side): a
  model's own `buy` action is a long round trip over the label horizon, returning
  `(1 + outcome_return) * (1 - fee)**2 - 1`; a `sell` goes (or stays) flat, which is no
  trade and no return; `hold` is nothing. Each buy is one trade (overlapping buys over a
  horizon > 1 are separate trades). Only the paired candles' actions count, so both models'
  trades cover the same period.
- Looks: the gate runs again after every resolved candle, so it spends its DM level over
  checkpoints of the growing record (`judge`: the first 500, 1000, 2000, ... candles at
  half, a quarter, an eighth, ... of the level) and a challenger no better is promoted at
  most at the configured level however often it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.ops.gate import GateConfig, GateDecision, decide
from engine.ops.stats import log_loss_rows, zero_one_loss
from engine.trading.backtest import DEFAULT_FEE
from models import CLASSES

if TYPE_CHECKING:
    import duckdb

    from engine.ops.settings import OpsSettings
    from store.registry import AliasEvent, ModelRecord

LIVE_WINDOW = 500  # the newest live rows the side-by-side metrics read per model
# a live row as the evidence reads it: its probabilities one column per class of CLASSES
# (NaN: the model gave no answer)
PROBA_COLUMNS = ("p_sell", "p_hold", "p_buy")
ROW_COLUMNS = ("ts", *PROBA_COLUMNS, "action", "label_resolved", "outcome_return")
HELD = "held"  # shadow_evidence's default role: the alias the challenger holds now


# --- evidence ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """A challenger's shadow record against the champion: per-candle losses on the paired
    candles and each model's trade returns there (see the module docstring for what is
    paired, left out and traded)."""

    market: str
    unit: str
    champion_id: int
    challenger_id: int
    role: str | None  # the challenger's rows made in this role count (None: any role)
    since: datetime | None  # the record starts here (None: every row)
    fee: float
    horizon: int  # the label horizon in candles: the DM test's autocorrelation lags
    other_roles: int  # the challenger's resolved rows left out: made in another role
    resolved_both: int  # candles both models have resolved rows for (in its role, from since)
    champion_unanswered: int  # of those, left out: the champion gave no answer
    challenger_unanswered: int  # ... the challenger gave no answer (both: counted in each)
    in_sample: int  # ... a model trained or validated on them
    same_labels: bool  # both models' label specs are the same
    ts: np.ndarray  # the paired candles, ascending (datetime64, UTC)
    champion_loss: np.ndarray  # log-loss per paired candle
    challenger_loss: np.ndarray
    champion_zero_one: np.ndarray  # 1.0 where the most probable class was wrong
    challenger_zero_one: np.ndarray
    champion_trades: np.ndarray  # returns after fees of each model's buys on them
    challenger_trades: np.ndarray
    champion_bought: np.ndarray  # per paired candle: the model bought (its trades, in order)
    challenger_bought: np.ndarray
    note: str = ""

    @property
    def candles(self) -> int:
        """Paired candles: both resolved, both answered, both out of sample."""
        return len(self.ts)

    def first(self, n: int) -> Evidence:
        """The record on its first `n` paired candles (and the trades made on them)."""
        from dataclasses import replace

        a, b = int(self.champion_bought[:n].sum()), int(self.challenger_bought[:n].sum())
        return replace(
            self,
            ts=self.ts[:n],
            champion_loss=self.champion_loss[:n],
            challenger_loss=self.challenger_loss[:n],
            champion_zero_one=self.champion_zero_one[:n],
            challenger_zero_one=self.challenger_zero_one[:n],
            champion_trades=self.champion_trades[:a],
            challenger_trades=self.challenger_trades[:b],
            champion_bought=self.champion_bought[:n],
            challenger_bought=self.challenger_bought[:n],
        )

    def summary(self) -> dict[str, Any]:
        """The record in numbers (no arrays), for a report."""

        def mean(values: np.ndarray) -> float | None:
            return float(values.mean()) if len(values) else None

        def compounded(values: np.ndarray) -> float:
            return float(np.prod(1.0 + values) - 1.0) if len(values) else 0.0

        return {
            "role": self.role,
            "since": self.since,
            "candles": self.candles,
            "other_roles": self.other_roles,
            "resolved_both": self.resolved_both,
            "champion_unanswered": self.champion_unanswered,
            "challenger_unanswered": self.challenger_unanswered,
            "in_sample": self.in_sample,
            "first_ts": _timestamp(self.ts[0]) if self.candles else None,
            "last_ts": _timestamp(self.ts[-1]) if self.candles else None,
            "horizon": self.horizon,
            "same_labels": self.same_labels,
            "fee": self.fee,
            "champion_log_loss": mean(self.champion_loss),
            "challenger_log_loss": mean(self.challenger_loss),
            "champion_error_rate": mean(self.champion_zero_one),
            "challenger_error_rate": mean(self.challenger_zero_one),
            "champion_trades": len(self.champion_trades),
            "challenger_trades": len(self.challenger_trades),
            "champion_mean_trade": mean(self.champion_trades),
            "challenger_mean_trade": mean(self.challenger_trades),
            "champion_return": compounded(self.champion_trades),
            "challenger_return": compounded(self.challenger_trades),
            "note": self.note,
        }


def _timestamp(value: Any) -> datetime:
    """A UTC datetime (naive values are UTC)."""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def buy_trade_returns(
    actions: np.ndarray, outcome_returns: np.ndarray, fee: float = DEFAULT_FEE
) -> np.ndarray:
    """Each `buy`'s return after fees: a long round trip over the label horizon,
    `(1 + r) * (1 - fee)**2 - 1` (backtest.py's trade return with the fill at the decided
    close); `sell` (flat on spot) and `hold` trade nothing."""
    if not 0.0 <= fee < 1.0:
        raise ValueError(f"fee is a fraction per side, 0 <= fee < 1; got {fee}")
    acts = np.asarray(actions, dtype=object)
    bought = acts == "buy"
    returns = np.asarray(outcome_returns, dtype=np.float64)[bought]
    if not np.isfinite(returns).all():
        raise ValueError("a resolved buy has no finite outcome_return")
    return (1.0 + returns) * (1.0 - fee) ** 2 - 1.0


def pair_rows(
    champion: pd.DataFrame,
    challenger: pd.DataFrame,
    *,
    market: str,
    unit: str,
    champion_id: int,
    challenger_id: int,
    horizon: int = 1,
    fee: float = DEFAULT_FEE,
    role: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    seen_until: datetime | None = None,
    same_labels: bool = True,
) -> Evidence:
    """The evidence from two models' live rows (columns ROW_COLUMNS: the probabilities as
    p_sell, p_hold, p_buy, NaN when it gave no answer; rows without label_resolved are not
    resolved yet): pure, the store-free half of `shadow_evidence`.
    `seen_until`: the last candle either model trained or validated on, plus its label
    horizon; candles up to it are left out. `role`: only the challenger's rows made in it
    (they need a `role` column). `since`/`until`: only candles from / up to them."""
    for name, frame in (("champion", champion), ("challenger", challenger)):
        missing = [c for c in ROW_COLUMNS if c not in frame]
        if missing:
            raise ValueError(f"{name} rows lack columns {missing}")
    if role is not None and "role" not in challenger:
        raise ValueError("challenger rows lack the role column to keep its role's rows")
    left = _resolved(champion, since, until)
    right = _resolved(challenger, since, until, role is not None)
    other_roles = 0
    if role is not None:
        in_role = (right.pop("role") == role).to_numpy()
        other_roles = int((~in_role).sum())
        right = right[in_role]
    both = left.merge(right, on="ts", suffixes=("_a", "_b"), validate="one_to_one")
    resolved_both = len(both)
    unanswered_a = both[[f"{c}_a" for c in PROBA_COLUMNS]].isna().any(axis=1).to_numpy()
    unanswered_b = both[[f"{c}_b" for c in PROBA_COLUMNS]].isna().any(axis=1).to_numpy()
    if seen_until is not None:
        seen = (both["ts"] <= pd.Timestamp(seen_until)).to_numpy()
    else:
        seen = np.zeros(resolved_both, dtype=bool)
    answered = ~(unanswered_a | unanswered_b)
    in_sample = int((seen & answered).sum())
    keep = answered & ~seen
    paired = both[keep].sort_values("ts")
    labels = _class_indices(paired["label_resolved_a"])
    losses = {}
    for side in ("a", "b"):
        proba = paired[[f"{c}_{side}" for c in PROBA_COLUMNS]].to_numpy(dtype=np.float64)
        if not np.isfinite(proba).all():
            raise ValueError("a live prediction's probabilities are not finite")
        losses[side] = (
            log_loss_rows(proba, labels),
            zero_one_loss(proba.argmax(axis=1) if len(proba) else np.zeros(0, int), labels),
            buy_trade_returns(
                paired[f"action_{side}"].to_numpy(), paired[f"outcome_return_{side}"], fee
            ),
        )
    notes = []
    if not same_labels:
        notes.append("label specs differ: both are scored on the champion's labels")
    if in_sample:
        notes.append(f"{in_sample} candles up to {seen_until} were in a model's training split")
    return Evidence(
        market=market,
        unit=unit,
        champion_id=champion_id,
        challenger_id=challenger_id,
        role=role,
        since=since,
        fee=fee,
        horizon=horizon,
        other_roles=other_roles,
        resolved_both=resolved_both,
        champion_unanswered=int(unanswered_a.sum()),
        challenger_unanswered=int(unanswered_b.sum()),
        in_sample=in_sample,
        same_labels=same_labels,
        ts=paired["ts"].dt.tz_convert(None).to_numpy(),  # UTC, as datetime64
        champion_loss=losses["a"][0],
        challenger_loss=losses["b"][0],
        champion_zero_one=losses["a"][1],
        challenger_zero_one=losses["b"][1],
        champion_trades=losses["a"][2],
        challenger_trades=losses["b"][2],
        champion_bought=(paired["action_a"] == "buy").to_numpy(dtype=bool),
        challenger_bought=(paired["action_b"] == "buy").to_numpy(dtype=bool),
        note="; ".join(notes),
    )


def _resolved(
    rows: pd.DataFrame, since: datetime | None, until: datetime | None, with_role: bool = False
) -> pd.DataFrame:
    columns = [*ROW_COLUMNS, "role"] if with_role else list(ROW_COLUMNS)
    frame = rows.loc[rows["label_resolved"].notna(), columns].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    if since is not None:
        frame = frame[frame["ts"] >= pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame["ts"] <= pd.Timestamp(until)]
    return frame


def _class_indices(labels: pd.Series) -> np.ndarray:
    codes = pd.Categorical(labels, categories=list(CLASSES)).codes
    if (codes < 0).any():
        unknown = sorted(set(labels[codes < 0]))
        raise ValueError(f"resolved labels must be one of {', '.join(CLASSES)}, got {unknown}")
    return codes.astype(np.int64)


def shadow_evidence(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    champion_id: int,
    challenger_id: int,
    *,
    fee: float = DEFAULT_FEE,
    role: str | None = HELD,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Evidence:
    """The challenger's shadow record against the champion of `market`/`unit`, from the live
    prediction log: the candles both resolved, the challenger's rows made in `role` (default
    HELD: the alias it holds now, every row when it holds none; '*': any role), from `since`
    up to `until` (default: every candle). See the module docstring for every rule."""
    from store.registry import alias_holders, get_model

    champion, challenger = get_model(con, champion_id), get_model(con, challenger_id)
    for record in (champion, challenger):
        if (record.market, record.unit) != (market, unit):
            raise ValueError(
                f"{record.ref} is a model of {record.market} unit {record.unit},"
                f" not of {market} unit {unit}"
            )
    if role == HELD:
        held = [h.alias for h in alias_holders(con, model_id=challenger.id)]
        role = held[0] if held else None
    elif role == "*":
        role = None
    horizon = max(1, int(champion.label_spec.get("horizon", 1)))
    rows = [resolved_rows(con, r.id, market, unit, since, until) for r in (champion, challenger)]
    return pair_rows(
        rows[0],
        rows[1],
        market=market,
        unit=unit,
        champion_id=champion.id,
        challenger_id=challenger.id,
        horizon=horizon,
        fee=fee,
        role=role,
        since=since,
        until=until,
        seen_until=trained_until(champion, challenger),
        same_labels=champion.label_spec == challenger.label_spec,
    )


def resolved_rows(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    market: str,
    unit: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """A model's resolved live rows of `market`/`unit` as `pair_rows` reads them (ROW_COLUMNS
    and role), ascending ts: the probabilities split into columns in the query, so a long
    record loads without a loop over its rows."""
    clauses = [
        "source = 'live'",
        "model_id = ?",
        "market = ?",
        "unit = ?",
        "label_resolved IS NOT NULL",
    ]
    params: list[object] = [int(model_id), market, unit]
    for clause, value in (("ts >= ?", since), ("ts <= ?", until)):
        if value is not None:
            clauses.append(clause)
            params.append(_timestamp(value))
    frame = con.execute(
        "SELECT ts, probs[1] AS p_sell, probs[2] AS p_hold, probs[3] AS p_buy, action,"
        " label_resolved, outcome_return, role FROM predictions"
        f" WHERE {' AND '.join(clauses)} ORDER BY ts",
        params,
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def trained_until(*records: ModelRecord) -> datetime | None:
    """The last candle any of `records` trained or validated on (its `validation_to` or
    `train_to` tag) plus its label horizon: the candles whose outcomes it has seen. None when
    no record says (a model registered from an artifact)."""
    from store.candles import unit_minutes

    ends = []
    for record in records:
        tags = record.tags or {}
        end = tags.get("validation_to") or tags.get("train_to")
        if end:
            horizon = int(record.label_spec.get("horizon", 1))
            width = pd.Timedelta(minutes=unit_minutes(record.unit))
            ends.append(pd.Timestamp(_timestamp(end)) + horizon * width)
    return max(ends).to_pydatetime() if ends else None


def n_candidates(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> int:
    """How many models were ever tried as challenger of `market`/`unit` (distinct models
    given the challenger alias in its history): the deflated Sharpe's number of trials. At
    least 1: the one judged."""
    rows = con.execute(
        "SELECT count(DISTINCT model_id) FROM alias_events"
        " WHERE market = ? AND unit = ? AND alias = 'challenger' AND model_id IS NOT NULL",
        [market, unit],
    ).fetchall()
    return max(1, int(rows[0][0]))


@dataclass(frozen=True)
class Look:
    """A checkpoint of a growing record where the gate may promote: look k judges the first
    `min_resolved * 2**k` paired candles at DM level `dm_level / 2**(k+1)`."""

    index: int
    candles: int
    dm_level: float


def looks(candles: int, config: GateConfig) -> list[Look]:
    """The checkpoints a record of `candles` paired candles has reached."""
    out: list[Look] = []
    while config.min_resolved * 2 ** len(out) <= candles:
        k = len(out)
        out.append(Look(k, config.min_resolved * 2**k, config.dm_level / 2 ** (k + 1)))
    return out


def judge(
    evidence: Evidence, candidates: int, config: GateConfig | None = None
) -> tuple[GateDecision, Look | None]:
    """The gate's decision on a record that keeps growing, and the look it was made at.

    The live engine runs the gate again after every resolved candle; testing the whole record
    at the DM level each time would promote an equal-skill challenger far more often than
    the level says (scripts/bench_gate.py measures it). So the gate spends its level over
    checkpoints instead (a Bonferroni alpha-spending): it judges only the first
    `min_resolved * 2**k` candles, at level `dm_level / 2**(k+1)`, for every checkpoint k the
    record has reached. Those levels sum to at most `dm_level`, so a challenger truly no
    better passes the loss test at any look with probability at most `dm_level`, however
    often the gate runs; and between checkpoints the answer does not change. The decision
    is the first look's that promotes, else the latest look's; before the first checkpoint
    the whole record is judged (and is insufficient: too few candles)."""
    from dataclasses import replace

    config = config or GateConfig()
    reached = looks(evidence.candles, config)
    if not reached:
        return _decide(evidence, candidates, config), None
    for look in reached:
        decision = _decide(
            evidence.first(look.candles), candidates, replace(config, dm_level=look.dm_level)
        )
        if decision.verdict == "promote":
            return decision, look
    return decision, look


def _decide(evidence: Evidence, candidates: int, config: GateConfig) -> GateDecision:
    return decide(
        evidence.champion_loss,
        evidence.challenger_loss,
        evidence.champion_trades,
        evidence.challenger_trades,
        n_candidates=candidates,
        config=config,
        horizon=evidence.horizon,
    )


# --- the side-by-side report ------------------------------------------------------------------
@dataclass(frozen=True)
class Contender:
    """One model of the seat: its live metrics and, for a challenger or shadow, its evidence
    against the champion and the gate's decision on it. A shadow is judged for display only:
    it is never promoted (make it a challenger first)."""

    model_id: int
    ref: str
    role: str  # champion, challenger or shadow
    since: datetime | None  # when it was given its alias
    live: dict[str, Any] | None  # engine.ops.live_metrics' LiveMetrics.to_dict(); None: no rows
    evidence: Evidence | None = None
    decision: GateDecision | None = None
    look: Look | None = None  # the checkpoint the decision was made at (None: before the first)

    @property
    def promotable(self) -> bool:
        return self.role == "challenger" and self.decision is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "ref": self.ref,
            "role": self.role,
            "since": self.since,
            "live": self.live,
            "evidence": self.evidence.summary() if self.evidence else None,
            "decision": self.decision.to_dict() if self.decision else None,
            "look": self.look.__dict__ if self.look else None,
            "promotable": self.promotable,
        }


@dataclass(frozen=True)
class ABReport:
    market: str
    unit: str
    auto_promote: bool
    config: GateConfig
    n_candidates: int
    champion: Contender | None
    challengers: list[Contender] = field(default_factory=list)
    shadows: list[Contender] = field(default_factory=list)
    note: str = ""

    @property
    def best(self) -> Contender | None:
        """The challenger the gate would promote: among those it promotes, the lowest DM
        p-value (then the lowest loss); None when it promotes none."""
        return best_challenger(self.challengers)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "market": self.market,
            "unit": self.unit,
            "auto_promote": self.auto_promote,
            "config": {**self.config.__dict__},
            "n_candidates": self.n_candidates,
            "champion": self.champion.to_dict() if self.champion else None,
            "challengers": [c.to_dict() for c in self.challengers],
            "shadows": [c.to_dict() for c in self.shadows],
            "recommended": best.ref if best else None,
            "note": self.note,
        }


def best_challenger(contenders: list[Contender]) -> Contender | None:
    winners = [
        c
        for c in contenders
        if c.promotable and c.decision is not None and c.decision.verdict == "promote"
    ]
    if not winners:
        return None
    return min(winners, key=lambda c: (c.decision.dm.p_value, c.decision.challenger_loss))  # type: ignore[union-attr]


def ab_report(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    settings: OpsSettings,
    *,
    fee: float = DEFAULT_FEE,
    last: int | None = LIVE_WINDOW,
    now: datetime | None = None,
) -> ABReport:
    """Champion, challengers and shadows of `market`/`unit` side by side: each one's live
    metrics (its newest `last` rows; None: none read) and each challenger's and shadow's
    evidence and gate decision. `now`: only candles up to it count (a replay's clock)."""
    from engine.ops.live_metrics import live_metrics
    from store.registry import alias_holders

    holders = alias_holders(con, market, unit)
    candidates = n_candidates(con, market, unit)

    def live(model_id: int) -> dict[str, Any] | None:
        if last is None:
            return None
        metrics = live_metrics(con, model_id, market=market, unit=unit, last=last, fee=fee)
        data = metrics.to_dict()
        return data if data.get("n_predictions") else None

    champion_holder = next((h for h in holders if h.alias == "champion"), None)
    if champion_holder is None:
        return ABReport(
            market,
            unit,
            settings.auto_promote,
            settings.gate,
            candidates,
            None,
            note=f"{market} unit {unit} has no champion: nothing to compare with"
            " (promote a model first)",
        )
    champion = Contender(
        champion_holder.model_id,
        champion_holder.ref,
        "champion",
        _timestamp(champion_holder.since),
        live(champion_holder.model_id),
    )
    groups: dict[str, list[Contender]] = {"challenger": [], "shadow": []}
    for holder in holders:
        if holder.alias == "champion":
            continue
        since = _timestamp(holder.since)
        evidence = shadow_evidence(
            con,
            market,
            unit,
            champion.model_id,
            holder.model_id,
            fee=fee,
            role=holder.alias,
            until=now,
        )
        decision, look = judge(evidence, candidates, settings.gate)
        groups[holder.alias].append(
            Contender(
                holder.model_id,
                holder.ref,
                holder.alias,
                since,
                live(holder.model_id),
                evidence,
                decision,
                look,
            )
        )
    note = "" if groups["challenger"] else "no challenger: give a model the challenger alias"
    return ABReport(
        market,
        unit,
        settings.auto_promote,
        settings.gate,
        candidates,
        champion,
        groups["challenger"],
        groups["shadow"],
        note,
    )


# --- the gate ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateRun:
    """What one run of the gate did on a market/unit: every challenger's decision, the one it
    promotes (`chosen`: the best whose verdict is promote) and whether the champion alias
    moved (only with auto_promote; otherwise `chosen` is a recommendation)."""

    market: str
    unit: str
    checked_at: datetime
    auto_promote: bool
    report: ABReport
    chosen: Contender | None
    moved: bool
    previous: str | None  # the champion before the move (or the one a move would replace)
    events: list[AliasEvent] = field(default_factory=list)
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "market": self.market,
            "unit": self.unit,
            "checked_at": self.checked_at,
            "auto_promote": self.auto_promote,
            "chosen": self.chosen.ref if self.chosen else None,
            "chosen_id": self.chosen.model_id if self.chosen else None,
            "moved": self.moved,
            "previous": self.previous,
            "text": self.text,
            "report": self.report.to_dict(),
        }


def gate_check(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    settings: OpsSettings,
    *,
    now: datetime | None = None,
    fee: float = DEFAULT_FEE,
    last: int | None = LIVE_WINDOW,
) -> GateRun:
    """Run the gate for every challenger of `market`/`unit` (candles up to `now`, default:
    all; `last=None` skips the live metrics, which the gate does not use). With `settings.auto_promote` the best one it promotes takes the champion alias
    (`engine.ops.promotion.move`, by 'gate', the decision's reason in the history; a model
    whose artifact no longer loads is passed over for the next best); without it nothing
    moves and the run says which it recommends. Shadows are never promoted. The caller
    switches the engine to the new champion on the next candle."""
    from engine.ops.promotion import move
    from store.artifacts import ArtifactError
    from store.registry import champion, get_model

    checked_at = now or datetime.now(UTC)
    report = ab_report(con, market, unit, settings, fee=fee, now=now, last=last)
    previous = report.champion.ref if report.champion else None

    def run(chosen: Contender | None, text: str, events: list[AliasEvent] | None = None) -> GateRun:
        return GateRun(
            market,
            unit,
            checked_at,
            settings.auto_promote,
            report,
            chosen,
            moved=bool(events),
            previous=previous,
            events=events or [],
            text=text,
        )

    if report.champion is None:
        return run(None, report.note)
    winners = sorted(
        (
            c
            for c in report.challengers
            if c.promotable and c.decision is not None and c.decision.verdict == "promote"
        ),
        key=lambda c: (c.decision.dm.p_value, c.decision.challenger_loss),  # type: ignore[union-attr]
    )
    if not winners:
        verdicts = "; ".join(
            f"{c.ref}: {c.decision.reason}" for c in report.challengers if c.decision
        )
        return run(
            None,
            f"{previous} stays champion: " + (verdicts or "no challenger"),
        )
    if not settings.auto_promote:
        best = winners[0]
        return run(
            best,
            f"recommended: promote {best.ref} over {previous} (auto-promotion is off):"
            f" {_reason(best)}",
        )
    skipped = []
    for best in winners:
        holder = champion(con, market, unit)
        if holder is None or holder.id != report.champion.model_id:
            now_held = holder.ref if holder else "none"
            return run(
                None,
                f"the champion changed while the gate ran ({now_held} now): nothing moved;"
                " the next run judges against it",
            )
        reason = _reason(best)
        try:
            events = move(con, get_model(con, best.model_id), "champion", by="gate", reason=reason)
        except (ArtifactError, OSError, ValueError) as exc:  # AliasRefused is a ValueError
            skipped.append(f"{best.ref} passed over: {exc}")
            continue
        text = f"promoted {best.ref} over {previous}: {reason}"
        if skipped:
            text += " (" + "; ".join(skipped) + ")"
        return run(best, text, events)
    return run(None, f"{previous} stays champion: " + "; ".join(skipped))


def _reason(contender: Contender) -> str:
    return contender.decision.reason if contender.decision else ""
