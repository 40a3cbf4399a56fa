"""Benchmark of the promotion gate's honesty: how often it promotes a challenger truly no
better than the champion (the false-promotion rate, against the configured DM level), and how
often it promotes a clearly and a slightly better one, with the minimum-evidence cases.

Each configuration runs many seeds of the synthetic shadow record (tests/engine/ops/
simulate.py: a market whose true class probabilities change every candle; both models see
them through their own noise; equal noise is equal skill). The record is built as
engine.ops.ab builds it from live rows (per-candle log-loss against the label; each buy a
long round trip over the horizon after a 0.05 % fee per side; a sell is flat on spot), then
judged with the default GateConfig (500 resolved candles, 30 trades, DM level 0.05, DSR
0.95, 2 % drawdown margin) and 3 candidates tried, in one of three ways:

- one look: `engine.ops.gate.decide` once on the whole record at the configured level;
- naive: the same at a look every N candles from 500 on, promoted when any look promotes:
  what running `decide` after every resolved candle would do (the DM test alone at the same
  looks shows how much repeated looks inflate a test by itself);
- gate_check: `engine.ops.ab.judge`, which spends the level over checkpoints (the first 500,
  1000, 2000, ... candles at 1/2, 1/4, 1/8, ... of it): the rate holds for any number of
  looks, since between checkpoints its answer does not change. This is the deployed rate.

The REAL path runs end to end: both models registered in a temp store with their aliases,
their rows inserted into `predictions` (source 'live', store.predictions.
insert_live_predictions), their outcomes written as the resolver writes them,
`engine.ops.ab.shadow_evidence` reading them back (pairing, roles), then `decide` and `judge`.

Each row: the measured rate with its binomial 95 % interval (Clopper–Pearson) and the target
(equal skill: at most the level, met when the measured rate is; 0 below the minimum
evidence; power rows have none). The footer says how long it took.

    .venv/bin/python scripts/bench_gate.py [--seeds 1000] [--real-seeds 400] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.ops.ab import Evidence, buy_trade_returns, judge
from engine.ops.gate import GateConfig, decide
from engine.ops.stats import log_loss_rows, zero_one_loss
from models import CLASSES
from scripts.benchtable import Row, print_table
from tests.engine.ops.simulate import ShadowStream, shadow_stream

FEE = 0.0005
ACT_AT = 0.55
CANDIDATES = 3
CONFIG = GateConfig()


@dataclass(frozen=True)
class Case:
    name: str
    n_candles: int
    challenger_noise: float = 1.0
    signal: float = 1.0
    equal: bool = True  # truly no better: the rate must stay at most the level
    # how the gate is run: "one" look at the whole record at the configured level; "every"
    # N candles from the minimum on, each at the configured level (a naive deployment);
    # "spending": as gate_check runs it (engine.ops.ab.judge), any number of looks
    mode: str = "one"
    every: int = 0
    seeds: float = 1.0  # this share of the seeds (the many-look rows are slow)


def actions_of(proba: np.ndarray) -> np.ndarray:
    """A model's own thresholded action: buy or sell when its probability reaches ACT_AT."""
    side = np.where(proba[:, 2] >= proba[:, 0], "buy", "sell")
    return np.where(np.maximum(proba[:, 0], proba[:, 2]) >= ACT_AT, side, "hold").astype(object)


def evidence_of(stream: ShadowStream, end: int | None = None) -> Evidence:
    """The record of the first `end` candles as engine.ops.ab builds it from live rows (every
    candle answered and resolved): log-loss against the label, each buy's return after fees."""
    labels, move = stream.labels[:end], stream.move[:end]
    arrays: dict[str, Any] = {}
    for side, proba in (
        ("champion", stream.champion_proba),
        ("challenger", stream.challenger_proba),
    ):
        proba = proba[:end]
        actions = actions_of(proba)
        arrays[f"{side}_loss"] = log_loss_rows(proba, labels)
        arrays[f"{side}_zero_one"] = zero_one_loss(proba.argmax(axis=1), labels)
        arrays[f"{side}_trades"] = buy_trade_returns(actions, move, FEE)
        arrays[f"{side}_bought"] = actions == "buy"
    n = len(labels)
    return Evidence(
        market="KRW-BTC",
        unit="1",
        champion_id=1,
        challenger_id=2,
        role="challenger",
        since=None,
        fee=FEE,
        horizon=1,
        other_roles=0,
        resolved_both=n,
        champion_unanswered=0,
        challenger_unanswered=0,
        in_sample=0,
        same_labels=True,
        ts=np.arange(n),
        **arrays,
    )


def one_look(evidence: Evidence) -> tuple[bool, bool]:
    """(the gate promotes, the DM test alone rejects) on the whole record, configured level."""
    decision = decide(
        evidence.champion_loss,
        evidence.challenger_loss,
        evidence.champion_trades,
        evidence.challenger_trades,
        n_candidates=CANDIDATES,
        config=CONFIG,
        horizon=evidence.horizon,
    )
    return decision.verdict == "promote", decision.dm.p_value <= CONFIG.dm_level


def run_case(case: Case, seeds: int) -> tuple[int, int]:
    """(seeds the gate promoted, at some look; seeds the DM test alone rejected at some look)."""
    count = dm_only = 0
    for seed in range(seeds):
        stream = shadow_stream(
            seed, case.n_candles, challenger_noise=case.challenger_noise, signal=case.signal
        )
        evidence = evidence_of(stream)
        if case.mode == "spending":
            count += judge(evidence, CANDIDATES, CONFIG)[0].verdict == "promote"
            continue
        if case.mode == "every":
            ends = range(CONFIG.min_resolved, case.n_candles + 1, case.every)
            looks = [one_look(evidence.first(end)) for end in ends]
        else:
            looks = [one_look(evidence)]
        count += any(gate for gate, _ in looks)
        dm_only += any(dm for _, dm in looks)
    return count, dm_only


def interval(k: int, n: int) -> tuple[float, float]:
    """Clopper–Pearson 95 % interval of a binomial rate."""
    low = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return low, high


def rate_row(name: str, k: int, n: int, target: str, ok: bool | None) -> Row:
    low, high = interval(k, n)
    return (name, f"{k}/{n} = {k / n:.3f} [{low:.3f}, {high:.3f}]", target, ok)


# --- the real path ------------------------------------------------------------------------------
def real_path(seeds: int, n_candles: int, challenger_noise: float) -> tuple[int, int, float]:
    """`seeds` shadow records through a temp store: (promotions at one look at the configured
    level, promotions as gate_check judges, seconds per seed). Checks on the first seed that
    the evidence read back equals the pure one."""
    with tempfile.TemporaryDirectory() as home:
        os.environ["UPQUANT_HOME"] = home
        from engine.ops.ab import judge, shadow_evidence
        from store.db import connect
        from store.predictions import insert_live_predictions
        from store.registry import move_alias, register_model

        con = connect()
        ids = []
        for name in ("bench-champion", "bench-challenger"):
            record = register_model(
                con,
                name=name,
                kind="xgboost",
                market="KRW-BTC",
                unit="1",
                feature_spec={},
                feature_spec_hash="-",
                label_spec={"horizon": 1},  # the simulated candles are independent
                params={},
                artifact="artifacts/bench.tar",
                sha256="0" * 64,
                size=0,
                status="candidate",
                metrics={},
            )
            ids.append(record.id)
        move_alias(con, ids[0], "champion", reason="bench")
        move_alias(con, ids[1], "challenger", reason="bench")
        ts = pd.date_range("2030-01-01", periods=n_candles, freq="min", tz="UTC")
        single = spent = 0
        started = time.perf_counter()
        for seed in range(seeds):
            stream = shadow_stream(seed, n_candles, challenger_noise=challenger_noise)
            con.execute("DELETE FROM predictions")
            for model_id, role, proba in (
                (ids[0], "champion", stream.champion_proba),
                (ids[1], "challenger", stream.challenger_proba),
            ):
                frame = pd.DataFrame(
                    {
                        "ts": ts,
                        "market": "KRW-BTC",
                        "unit": "1",
                        "model_id": model_id,
                        "role": role,
                        "mode": "live",
                        "probs": list(proba),
                        "action": actions_of(proba),
                        "acted": role == "champion",
                    }
                )
                insert_live_predictions(con, frame)
            outcomes = pd.DataFrame(
                {
                    "ts": ts,
                    "label_resolved": np.array(CLASSES)[stream.labels],
                    "outcome_return": stream.move,
                }
            )
            con.register("bench_outcomes", outcomes)
            con.execute(
                "UPDATE predictions p SET label_resolved = o.label_resolved,"
                " outcome_return = o.outcome_return, resolved_at = now()"
                " FROM bench_outcomes o WHERE p.ts = o.ts"
            )
            con.unregister("bench_outcomes")
            evidence = shadow_evidence(con, "KRW-BTC", "1", ids[0], ids[1], fee=FEE)
            if seed == 0:
                pure = evidence_of(stream)
                assert evidence.candles == n_candles, evidence.summary()
                for name in (
                    "champion_loss",
                    "challenger_loss",
                    "champion_trades",
                    "challenger_trades",
                    "champion_bought",
                    "challenger_bought",
                ):
                    np.testing.assert_allclose(
                        getattr(evidence, name), getattr(pure, name), rtol=1e-12
                    )
            single += one_look(evidence)[0]
            spent += judge(evidence, CANDIDATES, CONFIG)[0].verdict == "promote"
        con.close()
        return single, spent, (time.perf_counter() - started) / max(seeds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="seeds per pure configuration")
    parser.add_argument("--real-seeds", type=int, default=400, help="seeds on the real path")
    parser.add_argument("--quick", action="store_true", help="200 pure and 60 real seeds")
    args = parser.parse_args()
    seeds = 200 if args.quick else args.seeds
    real_seeds = 60 if args.quick else args.real_seeds
    level = CONFIG.dm_level
    began = time.perf_counter()
    cases = [
        Case("equal skill, one look, 2000 candles (both profitable)", 2000),
        Case("equal skill, one look, 2000 candles (neither profitable)", 2000, signal=0.5),
        Case("equal skill, one look, 500 candles (the minimum)", 500),
        Case("equal skill, naive: a look every 100 of 500..2000", 2000, mode="every", every=100),
        Case(
            "equal skill, naive: a look every 10 of 500..2000",
            2000,
            mode="every",
            every=10,
            seeds=0.4,
        ),
        Case("equal skill, gate_check (spending), any looks to 2000", 2000, mode="spending"),
        Case(
            "equal skill, gate_check (spending), any looks to 8000",
            8000,
            mode="spending",
            seeds=0.4,
        ),
        Case("clearly better (noise 0.5), one look, 2000 candles", 2000, 0.5, equal=False),
        Case("clearly better (noise 0.5), one look, 500 (the minimum)", 500, 0.5, equal=False),
        Case(
            "clearly better (noise 0.5), gate_check, to 2000",
            2000,
            0.5,
            equal=False,
            mode="spending",
        ),
        Case(
            "clearly better (noise 0.5), gate_check, to 500 (the minimum)",
            500,
            0.5,
            equal=False,
            mode="spending",
        ),
        Case("slightly better (noise 0.9), one look, 2000 candles", 2000, 0.9, equal=False),
        Case("slightly better (noise 0.9), one look, 500 (the minimum)", 500, 0.9, equal=False),
        Case(
            "slightly better (noise 0.9), gate_check, to 2000",
            2000,
            0.9,
            equal=False,
            mode="spending",
        ),
        Case(
            "slightly better (noise 0.9), gate_check, to 8000",
            8000,
            0.9,
            equal=False,
            mode="spending",
            seeds=0.4,
        ),
        Case(
            "clearly better (noise 0.5), 450 candles (below minimum)",
            450,
            0.5,
            equal=False,
            mode="spending",
        ),
    ]
    rows: list[Row] = []
    for case in cases:
        n = max(int(seeds * case.seeds), 10)
        k, dm_only = run_case(case, n)
        if case.n_candles < CONFIG.min_resolved:
            rows.append(rate_row(case.name, k, n, "0", k == 0))
        elif case.equal:
            rows.append(rate_row(case.name, k, n, f"<= {level:g}", k / n <= level))
            if case.mode == "every":  # what repeated looks do to the loss test by itself
                rows.append(
                    rate_row("  ... the DM test alone at those looks", dm_only, n, "-", None)
                )
        else:
            rows.append(rate_row(case.name, k, n, "power: -", None))
    single, spent, per_seed = real_path(real_seeds, 1000, 1.0)
    rows.append(
        rate_row(
            "REAL path (store, shadow_evidence): equal skill, one look, 1000",
            single,
            real_seeds,
            f"<= {level:g}",
            single / real_seeds <= level,
        )
    )
    rows.append(
        rate_row(
            "REAL path: equal skill, gate_check's judge, 1000",
            spent,
            real_seeds,
            f"<= {level:g}",
            spent / real_seeds <= level,
        )
    )
    better = max(real_seeds // 4, 10)
    single, spent, _ = real_path(better, 1000, 0.5)
    rows.append(
        rate_row(
            "REAL path: clearly better (noise 0.5), gate_check's judge, 1000",
            spent,
            better,
            "power: -",
            None,
        )
    )
    rows.append(
        (
            "REAL path: store round trip per seed (2 x 1000 rows)",
            f"{per_seed * 1000:.0f} ms",
            "-",
            None,
        )
    )
    elapsed = time.perf_counter() - began
    print_table(
        rows,
        f"gate: DM level {level:g}, DSR {CONFIG.dsr_level:g}, min {CONFIG.min_resolved} candles"
        f" / {CONFIG.min_trades} trades, {CANDIDATES} candidates; {seeds} seeds per pure row"
        f" (0.4 of them on the slow ones); took {elapsed:.1f} s",
    )


if __name__ == "__main__":
    main()
