"""Benchmarks of the research pipeline against the targets of issue 4; prints one table.

Each benchmark is a function taking the synthetic candles and returning table rows; add new
ones to BENCHMARKS. Run: `.venv/bin/python scripts/bench_research.py [--candles N] [--runs R]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from engine.research.features import DEFAULT_SPEC, compute_features, compute_latest, warm_up
from engine.trading.backtest import backtest, buy_and_hold_actions, sma_cross_actions

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
        timed(lambda: compute_features(candles), 3, warmup=1),
        target=2.0,
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


BENCHMARKS: list[Benchmark] = [bench_features, bench_backtest]


def render(rows: list[Row], header: str) -> None:
    table = Table(title=header, title_justify="left")
    for column in ("benchmark", "candles", "ms", "best ms", "candles/s", "target", ""):
        table.add_column(column, justify="left" if column in ("benchmark", "") else "right")
    for row in rows:
        verdict = ""
        if row.target is not None:
            verdict = "[green]ok[/]" if row.value <= row.target else "[red]over[/]"
        table.add_row(
            row.name,
            f"{row.size:,}",
            f"{row.value * 1e3:,.2f} ({row.stat})",
            f"{min(row.times) * 1e3:,.1f}",
            f"{row.size / row.median / 1e6:,.2f}M",
            "" if row.target is None else f"≤ {row.target * 1e3:,.0f} ms",
            f"{verdict} {row.note}".strip(),
        )
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candles", type=int, default=1_000_000, help="Synthetic candles.")
    parser.add_argument("--runs", type=int, default=15, help="Timed runs per benchmark.")
    args = parser.parse_args()
    candles, source = synthetic_candles(args.candles)
    rows = [row for benchmark in BENCHMARKS for row in benchmark(candles, args.runs)]
    render(rows, f"upquant research benchmarks · {source} · median of {args.runs} runs")


if __name__ == "__main__":
    main()
