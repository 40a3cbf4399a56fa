"""Shadow evaluation's cost on the live path: a closed candle to its stored signal, and to
every model's prediction logged, with 0, 1 and 3 challengers in shadow.

A temporary store holds 6,000 real KRW-BTC 1-minute candles (../shared/data) and four XGBoost
models trained on them (default parameters: the champion and three challengers). The real
engine (`LiveEngine.on_closed`, live settings: every signal and prediction written at once)
decides on stored candles one after another; each configuration plays its own candles (the
log never skips a repeated one), and the configurations alternate over rounds in one run so
the machine's noise hits them alike. `signal` is the time from the closed candle to its
signal stored (the challengers predict after it); `logged` to every model's prediction in
the live log.

    .venv/bin/python scripts/bench_ops_shadow.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchtable import Row, print_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit"
CHALLENGERS = (0, 1, 3)


def _candles(rows: int):  # type: ignore[no-untyped-def]
    import pandas as pd

    raw = pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=rows)
    frame = pd.DataFrame(
        {"market": "KRW-BTC", "unit": "1", "ts": pd.to_datetime(raw["timestamp"], utc=True)}
    )
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = raw[col].astype("float64")
    frame["value"] = float("nan")
    return frame


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench(quick: bool) -> list[Row]:
    home = tempfile.mkdtemp(prefix="upquant-bench-shadow-")
    os.environ["UPQUANT_HOME"] = home
    from engine.live.engine import LiveEngine, SignalEvent
    from engine.live.inference import load_record
    from engine.live.seats import Seat
    from engine.research.features import warm_up
    from engine.training.train import train_model
    from store.candles import upsert_candles
    from store.db import connect

    rounds, per_round = (2, 60) if quick else (3, 200)
    candles = _candles(6000)
    con = connect()
    upsert_candles(con, candles)
    warm_up()
    records = [
        train_model(
            con,
            "xgboost",
            "KRW-BTC",
            "1",
            params={"seed": seed, "device": "cpu"},
            name=f"m{seed}",
            promote=seed == 0,
        ).model
        for seed in range(4)
    ]
    loaded = [load_record(r) for r in records]
    for model in loaded:
        model.warm()
    played = candles.to_dict("records")
    cursor = len(played) - rounds * len(CHALLENGERS) * per_round
    signal: dict[int, list[float]] = {n: [] for n in CHALLENGERS}
    logged: dict[int, list[float]] = {n: [] for n in CHALLENGERS}

    async def play(n: int, start: int) -> None:
        engine = LiveEngine(
            con,
            "KRW-BTC",
            "1",
            model=loaded[0],
            shadows=[Seat(m, "challenger") for m in loaded[1 : 1 + n]],
            mode="replay",
        )
        engine.prime(candles.iloc[:start])
        stored_at: list[float] = []
        engine.subscribe(
            lambda e: stored_at.append(time.perf_counter()) if isinstance(e, SignalEvent) else None
        )
        for row in played[start : start + per_round]:
            began = time.perf_counter()
            await engine.on_closed(row)
            done = time.perf_counter()
            signal[n].append((stored_at[-1] - began) * 1000)
            logged[n].append((done - began) * 1000)

    started = time.perf_counter()
    for _ in range(rounds):
        for n in CHALLENGERS:
            asyncio.run(play(n, cursor))
            cursor += per_round
    con.close()
    rows: list[Row] = []
    for n in CHALLENGERS:
        rows.append(
            (
                f"closed candle -> stored signal, {n} in shadow, p50 / p99",
                f"{_pct(signal[n], 50):.2f} / {_pct(signal[n], 99):.2f} ms",
                "-",
                None,
            )
        )
        rows.append(
            (
                f"closed candle -> every prediction logged, {n} in shadow, p50 / p99",
                f"{_pct(logged[n], 50):.2f} / {_pct(logged[n], 99):.2f} ms",
                "-",
                None,
            )
        )
    base = _pct(signal[0], 50)
    rows.append(
        (
            "signal p50 with 3 in shadow vs none",
            f"{_pct(signal[3], 50) / base:.2f}x",
            "<= 1.5x (shadows predict after the signal)",
            _pct(signal[3], 50) / base <= 1.5,
        )
    )
    rows.append(("candles per configuration", f"{rounds * per_round}", "-", None))
    rows.append(("shadow bench wall time", f"{time.perf_counter() - started:.1f} s", "-", None))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer candles and rounds")
    args = parser.parse_args()
    print_table(bench(args.quick), "bench_ops_shadow: the real engine on a temporary store")
