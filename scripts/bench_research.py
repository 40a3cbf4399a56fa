"""Benchmarks of the research pipeline against the targets of issue 4; prints one table.

Each benchmark is a function taking the candles and returning table rows; add new ones to
BENCHMARKS. The candles are real: the shared KRW-BTC and KRW-ETH 1m files tiled end to end
(`real_candles`); `--synthetic` uses perturbed synthetic ones. Beside the default spec, the
TA-Lib and pandas-ta computations of the columns they define are timed as references.
Run: `.venv/bin/python scripts/bench_research.py [--candles N] [--runs R] [--synthetic]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root

from engine.research.features import DEFAULT_SPEC, compute_features, compute_latest, warm_up
from engine.trading.backtest import backtest, buy_and_hold_actions
from engine.trading.strategies import sma_cross_actions
from scripts.benchtable import print_table

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit" / "KRW-BTC_1m.csv"


@dataclass
class Row:
    name: str
    size: int  # items processed per run (candles)
    times: list[float]  # seconds, one per run
    target: float | None = None  # seconds, or None when informational
    note: str = ""
    stat: str = "median"  # or "p99": the figure compared with the target

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def value(self) -> float:
        return self.median if self.stat == "median" else float(np.percentile(self.times, 99))


Benchmark = Callable[[pd.DataFrame, int], list[Row]]


def timed(fn: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    """Wall times of `runs` calls after `warmup` untimed ones (garbage collected before each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def real_candles(n: int) -> tuple[pd.DataFrame, str]:
    """`n` real 1-minute candles: KRW-BTC and KRW-ETH 1m tiled alternately end to end, each
    tile's prices scaled so its first open is the previous tile's last close (levels join
    without a jump), timestamps continuing on the minute grid."""
    tiles = [pd.read_csv(SOURCE.with_name(f"KRW-{m}_1m.csv")) for m in ("BTC", "ETH")]
    prices = ["open", "high", "low", "close"]
    parts, total, scale, last_close = [], 0, 1.0, None
    while total < n:
        tile = tiles[len(parts) % 2]
        if last_close is not None:
            scale = last_close / float(tile["open"].iloc[0])
        part = tile[prices].to_numpy(np.float64) * scale
        parts.append(np.column_stack([part, tile["volume"].to_numpy(np.float64)]))
        last_close = part[-1, 3]
        total += len(part)
    block = np.concatenate(parts)[:n]
    frame = pd.DataFrame(block, columns=[*prices, "volume"])
    frame.insert(0, "ts", pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC"))
    frame.insert(0, "unit", "1")
    frame.insert(0, "market", "KRW-BTC")
    return frame, f"KRW-BTC/KRW-ETH 1m tiled {len(parts)}x (price drift per tile)"


def synthetic_candles(n: int, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """`n` one-minute candles: the real KRW-BTC 1m candle shapes and volumes tiled, returns
    perturbed.

    Falls back to a random walk when the shared data is absent.
    """
    rng = np.random.default_rng(seed)
    if SOURCE.exists():
        raw = pd.read_csv(SOURCE)
        close = raw["close"].to_numpy(dtype="float64")
        log_ret = np.diff(np.log(close))
        gap = raw["open"].to_numpy()[1:] / close[:-1]
        up = raw["high"].to_numpy()[1:] / np.maximum(raw["open"], raw["close"]).to_numpy()[1:]
        down = raw["low"].to_numpy()[1:] / np.minimum(raw["open"], raw["close"]).to_numpy()[1:]
        reps = -(-n // len(log_ret))
        pick = np.resize(np.arange(len(log_ret)), n)
        log_ret = log_ret[pick] + rng.normal(0.0, 1e-4, n)
        gap, up, down = gap[pick], up[pick], down[pick]
        volume = raw["volume"].to_numpy(dtype="float64")[1:][pick]
        source = f"{SOURCE.name} tiled {reps}× with N(0, 1e-4) log-return noise"
    else:
        log_ret = rng.normal(0.0, 1e-3, n)
        gap, up, down = np.ones(n), np.full(n, 1.0005), np.full(n, 0.9995)
        volume = rng.gamma(2.0, 0.5, n)
        source = "random walk (shared data absent)"
    close = 1.4e8 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate(([1.4e8], close[:-1])) * gap
    frame = pd.DataFrame(
        {
            "market": "KRW-BTC",
            "unit": "1",
            "ts": pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close) * up,
            "low": np.minimum(open_, close) * down,
            "close": close,
            "volume": volume,  # real volumes: constant ones would flatter the volume kinds
        }
    )
    return frame, source


def bench_backtest(candles: pd.DataFrame, runs: int) -> list[Row]:
    """The vectorised backtest, trade list and metrics included, on three kinds of signals."""
    n = len(candles)
    sma = sma_cross_actions(candles["close"].to_numpy(), 10, 30)
    noise = np.random.default_rng(1).integers(-1, 2, n).astype(np.int8)
    rows = []
    for label, actions in (
        ("sma-cross(10,30) signals", sma),
        ("random signals (worst case)", noise),
        ("buy-and-hold", buy_and_hold_actions(n)),
    ):
        result = backtest(candles, actions)
        rows.append(
            Row(
                f"backtest, {label}",
                n,
                timed(partial(backtest, candles, actions), runs),
                target=0.050,
                note=f"{len(result.trades):,} trades; trade list + metrics included",
            )
        )
    closes = candles["close"].to_numpy()
    rows.append(
        Row(
            "sma-cross(10,30) signals, vectorised",
            n,
            timed(lambda: sma_cross_actions(closes, 10, 30), runs),
            note="= SmaCross.decide per candle",
        )
    )
    return rows


def bench_features(candles: pd.DataFrame, runs: int) -> list[Row]:
    """The default feature spec in batch, and for one new candle from the live window."""
    warm_up()  # numba JIT is paid at start, as the app does
    batch = Row(
        f"features, default spec ({len(DEFAULT_SPEC.columns())} columns), batch",
        len(candles),
        timed(lambda: compute_features(candles), min(runs, 5), warmup=1),
        target=1.0,
        note=f"median of {min(runs, 5)} runs (at most 5: one takes ~1 s on 1M candles)",
    )
    window = DEFAULT_SPEC.window()
    ends = np.random.default_rng(2).integers(window, len(candles), 500)
    latest = []
    for end in ends:
        piece = candles.iloc[end - window : end]
        started = time.perf_counter()
        compute_latest(piece)
        latest.append(time.perf_counter() - started)
    live = [
        Row(
            f"features, one new candle ({window}-candle window), {stat}",
            1,
            latest,
            target=0.003 if stat == "p99" else None,
            stat=stat,
            note="compute_latest, 500 calls",
        )
        for stat in ("median", "p99")
    ]
    return [batch, *live]


def _talib_columns(candles: pd.DataFrame) -> None:
    import talib

    h, lo, c, v = (candles[k].to_numpy(np.float64) for k in ("high", "low", "close", "volume"))
    for n in (10, 30):
        _ = c / talib.SMA(c, n) - 1
    _ = c / talib.EMA(c, 20) - 1
    talib.MACD(c, 12, 26, 9)
    talib.RSI(c, 14)
    talib.BBANDS(c, 20, 2.0, 2.0)
    talib.ATR(h, lo, c, 14)
    talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
    talib.ADX(h, lo, c, 14)
    talib.PLUS_DI(h, lo, c, 14)
    talib.MINUS_DI(h, lo, c, 14)
    talib.MFI(h, lo, c, v, 14)
    talib.OBV(c, v)
    talib.CCI(h, lo, c, 20)
    talib.ROC(c, 10)
    for n in (1, 2, 3, 5, 10, 30):
        talib.ROCR(c, n)
    talib.STDDEV(c, 30)


def _pandas_ta_columns(candles: pd.DataFrame) -> None:
    import pandas_ta as ta

    h, lo, c, v = (candles[k] for k in ("high", "low", "close", "volume"))
    for n in (10, 30):
        ta.sma(c, n, talib=False)
    ta.ema(c, 20, talib=False)
    ta.macd(c, 12, 26, 9, talib=False)
    ta.rsi(c, 14, talib=False)
    ta.bbands(c, 20, 2.0, talib=False)
    ta.atr(h, lo, c, 14, talib=False)
    ta.stoch(h, lo, c, 14, 3, 3, talib=False)
    ta.adx(h, lo, c, 14, talib=False)
    ta.mfi(h, lo, c, v, 14, talib=False)
    ta.obv(c, v, talib=False)
    ta.cci(h, lo, c, 20, talib=False)
    ta.roc(c, 10, talib=False)


def bench_references(candles: pd.DataFrame, runs: int) -> list[Row]:
    """What the libraries take for the indicator columns they can define (references only)."""
    return [
        Row(
            "reference: TA-Lib, 24 indicator columns of the default spec",
            len(candles),
            timed(partial(_talib_columns, candles), 3, warmup=1),
            note="SMA/EMA ratios, MACD, RSI, BBANDS, ATR, STOCH, ADX/DI, MFI, OBV, CCI, ROC",
        ),
        Row(
            "reference: pandas-ta (talib=False), 21 indicator columns",
            len(candles),
            timed(partial(_pandas_ta_columns, candles), 3, warmup=1),
        ),
    ]


BENCHMARKS: list[Benchmark] = [bench_features, bench_references, bench_backtest]


def render(rows: list[Row], footer: str) -> None:
    table = [
        (
            f"{row.name} ({row.size:,} candles)",
            f"{row.value * 1e3:,.2f} ms ({row.stat}; best {min(row.times) * 1e3:,.1f})"
            + (f"; {row.note}" if row.note else ""),
            "-" if row.target is None else f"<= {row.target * 1e3:,.0f} ms",
            None if row.target is None else row.value <= row.target,
        )
        for row in rows
    ]
    print_table(table, footer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candles", type=int, default=1_000_000, help="Candles.")
    parser.add_argument("--synthetic", action="store_true", help="Synthetic, not real candles.")
    parser.add_argument("--runs", type=int, default=15, help="Timed runs per benchmark.")
    args = parser.parse_args()
    make = synthetic_candles if args.synthetic else real_candles
    candles, source = make(args.candles)
    rows = [row for benchmark in BENCHMARKS for row in benchmark(candles, args.runs)]
    render(rows, f"upquant research benchmarks; {source}; median of {args.runs} runs")


if __name__ == "__main__":
    main()
