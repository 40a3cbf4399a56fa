"""Benchmark of the default feature spec: 1M one-minute candles in batch, one new candle live.

Prints a table (measured, target, ok). Candles are the real KRW-BTC 1-minute series tiled to
1,000,000 rows: each copy is rescaled to start at the previous copy's last close and its
volumes are jittered, timestamps stay on a gap-free 1-minute grid.

    .venv/bin/python scripts/bench_features.py [--rows 1000000] [--calls 500] [--breakdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.features import (
    DEFAULT_SPEC,
    FEATURE_KINDS,
    FeatureSpec,
    compute_features,
    compute_latest,
    warm_up,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit" / "KRW-BTC_1m.csv"
BATCH_TARGET_S = 2.0
LIVE_TARGET_MS = 3.0


def tiled_candles(path: Path, rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` one-minute candles built from the real series (see the module docstring)."""
    raw = pd.read_csv(path)
    base = raw[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
    rng = np.random.default_rng(seed)
    parts, last_close = [], base[0, 0]
    for _ in range(rows // len(base) + 1):
        tile = base.copy()
        tile[:, :4] *= last_close / tile[0, 0]
        tile[:, 4] *= rng.uniform(0.8, 1.25, len(tile))
        parts.append(tile)
        last_close = tile[-1, 3]
    values = np.vstack(parts)[:rows]
    frame = pd.DataFrame(values, columns=["open", "high", "low", "close", "volume"])
    frame.insert(0, "ts", pd.date_range("2024-01-01", periods=rows, freq="min", tz="UTC"))
    frame.insert(0, "unit", "1")
    frame.insert(0, "market", "KRW-BTC")
    frame["value"] = np.nan
    return frame


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def per_call_ms(fn: Callable[[pd.DataFrame], object], windows: list[pd.DataFrame]) -> np.ndarray:
    """Wall and CPU (this thread) milliseconds per call: CPU shows the cost without the
    waits another process on a shared machine causes."""
    out = np.empty((len(windows), 2))
    for i, window in enumerate(windows):
        wall, cpu = time.perf_counter(), time.thread_time()
        fn(window)
        out[i] = (time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="candles in the batch run")
    parser.add_argument("--calls", type=int, default=500, help="live single-candle calls")
    parser.add_argument("--data", type=Path, default=DATA, help="real 1-minute candle CSV")
    parser.add_argument("--breakdown", action="store_true", help="also time each feature kind")
    args = parser.parse_args()

    candles = tiled_candles(args.data, args.rows)
    warm_up()  # numba JIT (pandas-ta's and ours) is paid here, as the app does at start
    compute_features(candles.head(10_000))
    batch = statistics.median(timed(lambda: compute_features(candles), 3))
    columns = len(DEFAULT_SPEC.columns())

    window = DEFAULT_SPEC.window()
    rng = np.random.default_rng(1)
    ends = rng.integers(window, len(candles), args.calls)
    windows = [candles.iloc[end - window : end] for end in ends]
    latest = per_call_ms(lambda w: compute_latest(w), windows)
    full = per_call_ms(lambda w: compute_features(w).iloc[-1], windows[:200])

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"default feature spec {DEFAULT_SPEC.hash()}: {columns} columns,"
        f" warm-up {DEFAULT_SPEC.warmup()}, live window {window} candles;"
        f" {cores} cores (load average {load:.1f}), pandas {pd.__version__},"
        f" pandas-ta {version('pandas-ta')}"
    )
    rows = [
        (
            f"batch: {len(candles):,} x 1m candles (median of 3)",
            f"{batch:.2f} s",
            f"<= {BATCH_TARGET_S:.0f} s",
            batch <= BATCH_TARGET_S,
        ),
        ("batch throughput", f"{len(candles) / batch / 1e6:.2f} M candles/s", "", True),
    ]
    for name, ms, calls in (
        ("compute_latest(window)", latest, args.calls),
        ("compute_features(window).iloc[-1]", full, 200),
    ):
        p50, p99 = np.percentile(ms[:, 0], 50), np.percentile(ms[:, 0], 99)
        rows += [
            (f"live: {name} p50 ({calls} calls)", f"{p50:.2f} ms", "", True),
            (
                f"live: {name} p99",
                f"{p99:.2f} ms",
                f"<= {LIVE_TARGET_MS:.0f} ms",
                p99 <= LIVE_TARGET_MS,
            ),
            (f"live: {name} p99 CPU time", f"{np.percentile(ms[:, 1], 99):.2f} ms", "", True),
        ]
    if args.breakdown:
        for feature in DEFAULT_SPEC.features:
            if feature["kind"] == "lag":
                continue
            spec = FeatureSpec(features=(feature,), max_gap=DEFAULT_SPEC.max_gap)
            seconds = min(timed(lambda s=spec: compute_features(candles, s), 2))
            label = ", ".join(f"{k}={v}" for k, v in feature.items() if k != "kind")
            rows.append((f"  {feature['kind']}({label})", f"{seconds:.3f} s", "", True))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>20}  {'target':>8}  ok")
    for name, measured, target, ok in rows:
        print(f"{name:<{width}}  {measured:>20}  {target:>8}  {'yes' if ok else 'NO'}")
    assert set(FEATURE_KINDS) >= {f["kind"] for f in DEFAULT_SPEC.features}


if __name__ == "__main__":
    main()
