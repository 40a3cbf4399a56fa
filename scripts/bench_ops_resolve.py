"""Benchmark of resolving the live prediction log's outcomes (issue 11: <= 2 s for 1M
stored predictions).

Store: a fresh temporary one holding the four real series of ../shared/data/upbit (KRW-BTC
and KRW-ETH, 1- and 60-minute: 160,756 candles) and, per series, MODELS_PER_SERIES registered
models with different label specs (fixed horizon, volatility-scaled fixed horizon, triple
barrier with and without a volatility window, regression), each with one pending live
prediction on every candle, appended candle by candle as the live engine does (a candle's
rows of all the series' models together): 7 x 160,756 = 1,125,292 stored predictions. The
measure is one `resolve_outcomes` call over all of them (each series' candles read once,
every model's labels, one UPDATE), after numba's label kernels are loaded (as in a running
server); then the next call, with only the rows that cannot resolve left. `quick`: one model
per series (160,756 predictions).

    .venv/bin/python scripts/bench_ops_resolve.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.ops.outcomes import label_outcomes, resolve_outcomes
from engine.research.labels import LabelSpec
from scripts.benchtable import print_table
from store.candles import upsert_candles
from store.db import connect
from store.predictions import insert_live_predictions
from store.registry import register_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit"
SERIES = [
    ("KRW-BTC", "1", "KRW-BTC_1m.csv"),
    ("KRW-ETH", "1", "KRW-ETH_1m.csv"),
    ("KRW-BTC", "60", "KRW-BTC_60m.csv"),
    ("KRW-ETH", "60", "KRW-ETH_60m.csv"),
]
SPECS: list[tuple[dict[str, object], dict[str, object]]] = [  # (label spec, params)
    ({"horizon": 10, "threshold": 0.001}, {}),
    ({"horizon": 5, "threshold": 0.001, "vol_window": 60, "vol_multiple": 0.5}, {}),
    ({"horizon": 20, "threshold": 0.002, "scheme": "triple_barrier"}, {}),
    ({"horizon": 15, "threshold": 0.001, "scheme": "triple_barrier", "vol_window": 30}, {}),
    ({"horizon": 10, "threshold": 0.001, "scheme": "regression"}, {"threshold": 0.0015}),
    ({"horizon": 30, "threshold": 0.003}, {}),
    ({"horizon": 3, "threshold": 0.0005, "max_gap": None}, {}),
]
MODELS_PER_SERIES = len(SPECS)
TARGET_S = 2.0
TARGET_ROWS = 1_000_000


def read_series(market: str, unit: str, name: str) -> pd.DataFrame:
    raw = pd.read_csv(DATA / name)
    frame = pd.DataFrame(
        {"market": market, "unit": unit, "ts": pd.to_datetime(raw["timestamp"], utc=True)}
    )
    for column in ("open", "high", "low", "close", "volume"):
        frame[column] = raw[column].astype("float64")
    frame["value"] = float("nan")
    return frame


def build_store(con: duckdb.DuckDBPyConnection, models_per_series: int) -> int:
    """Candles of the four series and one pending live prediction per candle and model,
    appended candle by candle as the live engine does (each candle's rows of all the series'
    models together); returns the predictions stored."""
    stored = 0
    for market, unit, name in SERIES:
        candles = read_series(market, unit, name)
        upsert_candles(con, candles)
        ids = [
            register_model(
                con,
                name=f"bench-{market}-{unit}-{k}",
                kind="xgboost",
                market=market,
                unit=unit,
                feature_spec={},
                feature_spec_hash="-",
                label_spec=spec,
                params=params,
                artifact="bench/none",
                sha256="-",
                size=0,
                status="ready",
                metrics={},
            ).id
            for k, (spec, params) in enumerate(SPECS[:models_per_series])
        ]
        n = len(candles)
        rows = pd.DataFrame(
            {
                "ts": np.repeat(candles["ts"].to_numpy(), len(ids)),
                "market": market,
                "unit": unit,
                "model_id": np.tile(ids, n),
                "role": "shadow",
                "mode": "replay",
                "probs": [[0.2, 0.3, 0.5]] * (n * len(ids)),
                "action": "buy",
                "confidence": 0.5,
                "threshold": 0.5,
                "acted": False,
                "latency_ms": 1.0,
            }
        )
        stored += insert_live_predictions(con, rows)
    return stored


def bench(quick: bool) -> list[tuple[str, str, str]]:
    """(measure, result, target) rows: resolving every stored live prediction at once."""
    models = 1 if quick else MODELS_PER_SERIES
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UPQUANT_HOME"] = tmp
        con = connect()
        try:
            # warm-up: numba compiles the label kernels once per process (a server has)
            warm = read_series(*SERIES[0])[:500]
            label_outcomes(warm, LabelSpec(scheme="triple_barrier", vol_window=30), unit="1")
            stored = build_store(con, models)
            began = time.perf_counter()
            report = resolve_outcomes(con)
            seconds = time.perf_counter() - began
            again = time.perf_counter()
            second = resolve_outcomes(con)
            idle = time.perf_counter() - again
        finally:
            con.close()
    rate = stored / seconds
    scaled = seconds * TARGET_ROWS / stored
    return [
        (
            f"resolve {stored:,} live predictions ({models} model(s) x 4 real series)",
            (
                f"{seconds:.2f} s ({rate / 1e6:.2f}M rows/s; {report.resolved:,} resolved,"
                f" {report.pending:,} pending)"
            ),
            f"<= {TARGET_S * stored / TARGET_ROWS:.2f} s",
        ),
        (
            "  per 1M predictions",
            f"{scaled:.2f} s",
            f"<= {TARGET_S:.2f} s",
        ),
        (
            "  next call (nothing left to resolve but the pending tail)",
            f"{idle:.2f} s ({second.resolved} resolved)",
            "-",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one model per series")
    args = parser.parse_args()
    rows = bench(args.quick)
    table = [(m, r, t, None if t == "-" else _met(r, t)) for m, r, t in rows]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print_table(
        table, f"({os.cpu_count()} CPUs, load average {load}, Python {sys.version.split()[0]})"
    )


def _met(result: str, target: str) -> bool:
    return float(result.split()[0]) <= float(target.split()[1])


if __name__ == "__main__":
    main()
