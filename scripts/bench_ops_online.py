"""Benchmark of an online update of an XGBoost champion on one day of 1-minute candles (issue
11, target <= 5 s on CPU).

Store: a fresh temporary one. An XGBoost champion (the trainer's defaults: 300 rounds with
early stopping; `quick`: 100) is trained on the first PARENT_CANDLES (`quick`: 4,000) real
KRW-BTC 1-minute candles of ../shared/data/upbit; then the next 1,440 candles (one day) are
stored. The measure is one `online_update` call end to end: the candles read, the features
and labels of the new rows, DEFAULT_ROUNDS more boosting rounds from the champion's booster,
the artifact written, the child registered and given the challenger alias. It learns from
the rows after the champion's test part (`after="test"`: the day's resolved rows); the same
with `after="validation"` (the test part too) is shown beside it. Numba's feature kernels are
compiled before the timing, as in a running server.

    .venv/bin/python scripts/bench_ops_online.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.research.dataset import build_dataset
from engine.research.features import DEFAULT_SPEC
from engine.research.labels import LabelSpec
from engine.training.online import DEFAULT_ROUNDS, online_update
from engine.training.train import train_model
from scripts.benchtable import print_table
from store.candles import upsert_candles
from store.db import connect

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit" / "KRW-BTC_1m.csv"
PARENT_CANDLES = 20_000
DAY = 1440
TARGET_S = 5.0


def read_candles(rows: int) -> pd.DataFrame:
    raw = pd.read_csv(DATA, nrows=rows)
    frame = pd.DataFrame(
        {"market": "KRW-BTC", "unit": "1", "ts": pd.to_datetime(raw["timestamp"], utc=True)}
    )
    for column in ("open", "high", "low", "close", "volume"):
        frame[column] = raw[column].astype("float64")
    frame["value"] = float("nan")
    return frame


def bench(quick: bool) -> list[tuple[str, str, str]]:
    """(measure, result, target) rows: one online update of an XGBoost champion on a day."""
    first = 4_000 if quick else PARENT_CANDLES
    candles = read_candles(first + DAY)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UPQUANT_HOME"] = tmp
        con = connect()
        try:
            upsert_candles(con, candles.iloc[:first])
            params = {"device": "cpu", **({"n_estimators": 100} if quick else {})}
            began = time.perf_counter()
            report = train_model(con, "xgboost", "KRW-BTC", "1", params=params, name="champ")
            trained = time.perf_counter() - began
            upsert_candles(con, candles.iloc[first:])  # one more day
            # numba compiles the feature and label kernels once per process (a server has)
            build_dataset(candles.iloc[:500], DEFAULT_SPEC, LabelSpec(), unit="1")
            for after in ("test", "validation"):
                began = time.perf_counter()
                child = online_update(con, report.model.ref, after=after)  # type: ignore[arg-type]
                seconds = time.perf_counter() - began
                update = child.params["online_update"]
                rows.append(
                    (
                        (
                            f"online update after the {after} part: {update['rows']:,} rows,"
                            f" {DEFAULT_ROUNDS} rounds, registered as {child.ref}"
                        ),
                        f"{seconds:.2f} s",
                        f"<= {TARGET_S:.2f} s" if after == "test" else "-",
                    )
                )
        finally:
            con.close()
    rows.insert(
        0,
        (
            (
                f"  (champion: {first:,} candles,"
                f" {report.model.params.get('n_estimators')} rounds max, trained in)"
            ),
            f"{trained:.2f} s",
            "-",
        ),
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4,000-candle, 100-round champion")
    args = parser.parse_args()
    rows = bench(args.quick)
    table = [(m, r, t, None if t == "-" else _met(r, t)) for m, r, t in rows]
    print_table(table, f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")


def _met(result: str, target: str) -> bool:
    return float(result.split()[0]) <= float(target.split()[1])


if __name__ == "__main__":
    main()
