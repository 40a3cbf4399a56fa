"""Benchmark of the market-data layer: bulk import, REST backfill pace, live WebSocket path.

Prints a table (measured, target, ok):
- bulk import of 1,000,000 one-minute candles into the keyed `candles` table (a fresh store;
  median of --runs): from a DataFrame (upsert_candles) and end to end from a Parquet file
  (read, validate, upsert: `upquant data import`);
- backfill pace against the fake Upbit (tests/fake_upbit.py, 10 requests/s on the candle
  group, in its own process) as a fraction of that ceiling, over a bounded run, with the
  429s it answered;
- paging: requests per stored candle of a complete backfill (in-process fake, pace off) for a
  dense market, a thin one (a candle every ~7 minutes) and 3 days of candles that ended 14
  months ago; pages follow the candles (engine/data/backfill.py), so each costs about
  candles / 200 requests (before: buckets / 200, i.e. 0.0053, 0.0351 and 0.7051 req/candle);
- live: candle frames per second the WebSocket path (engine/data/feed.py: one socket, 200
  markets, batched DuckDB writes) takes from the fake, and the frame-to-stored latency
  (the fake stamps each frame with its send time; stored = the commit of the batch holding it).

Candles for the import are the real KRW-BTC 1-minute series tiled to --rows rows on a gap-free
grid (each copy rescaled to start at the previous copy's last close); the fake serves seeded
random walks. Every run is bounded by --backfill-seconds and --live-seconds.

    .venv/bin/python scripts/bench_data.py [--rows 1000000] [--runs 3] [--backfill-seconds 15]
        [--live-seconds 6] [--markets 200] [--only import,backfill,paging,live]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data.backfill import fetch_markets
from engine.data.candles import import_candles
from engine.data.feed import LiveFeed
from engine.upbit.client import RateLimiter
from scripts.benchtable import Row, print_table
from store.candles import upsert_candles
from store.db import connect
from tests.fake_upbit import FakeUpbit, candle_frame, generate_candles

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit" / "KRW-BTC_1m.csv"
IMPORT_TARGET = 1_000_000  # rows/s
BACKFILL_TARGET = 0.9  # of the 10 requests/s ceiling
LIVE_TARGET = 2_000  # frames/s
LATENCY_TARGET_S = 1.0  # p99 frame-to-stored


def tiled_candles(rows: int) -> pd.DataFrame:
    raw = pd.read_csv(DATA)
    base = raw[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
    parts, last = [], base[0, 0]
    for _ in range(rows // len(base) + 1):
        tile = base.copy()
        tile[:, :4] *= last / tile[0, 0]
        parts.append(tile)
        last = tile[-1, 3]
    values = np.concatenate(parts)[:rows]
    frame = pd.DataFrame(values, columns=["open", "high", "low", "close", "volume"])
    frame.insert(0, "ts", pd.date_range("2020-01-01", periods=rows, freq="min", tz="UTC"))
    frame.insert(0, "unit", "1")
    frame.insert(0, "market", "KRW-BTC")
    frame["value"] = frame["close"] * frame["volume"]
    return frame


def bench_import(rows: int, runs: int) -> list[Row]:
    frame = tiled_candles(rows)
    frame_rates, file_rates, again_rates = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "candles.parquet"
        frame.rename(columns={"ts": "timestamp"})[
            ["timestamp", "open", "high", "low", "close", "volume", "value"]
        ].to_parquet(parquet)
        for run in range(runs):
            con = connect(Path(tmp) / f"frame{run}.duckdb")
            started = time.perf_counter()
            assert upsert_candles(con, frame) == rows
            frame_rates.append(rows / (time.perf_counter() - started))
            started = time.perf_counter()
            assert upsert_candles(con, frame) == 0
            again_rates.append(rows / (time.perf_counter() - started))
            con.close()
            con = connect(Path(tmp) / f"file{run}.duckdb")
            started = time.perf_counter()
            report = import_candles(con, parquet, "KRW-BTC", "1")
            file_rates.append(rows / (time.perf_counter() - started))
            assert report.rows_new == rows and report.rows_rejected == 0
            con.close()
    med = statistics.median
    return [
        (
            f"import {rows:,} candles, DataFrame → keyed table",
            f"{med(frame_rates):,.0f} rows/s",
            f"≥ {IMPORT_TARGET:,}",
            med(frame_rates) >= IMPORT_TARGET,
        ),
        (
            f"import {rows:,} candles, Parquet file end to end (read, validate, upsert)",
            f"{med(file_rates):,.0f} rows/s",
            f"≥ {IMPORT_TARGET:,}",
            med(file_rates) >= IMPORT_TARGET,
        ),
        (
            f"re-import of the same {rows:,} (all keys exist: update)",
            f"{med(again_rates):,.0f} rows/s",
            "-",
            None,
        ),
    ]


# --------------------------------------------------------------------------- the fake's process


def serve(conn: Connection, mode: str, markets: list[str], days: int) -> None:
    """Run a FakeUpbit in this process; answer commands from `conn` until "stop"."""

    async def main() -> None:
        if mode == "backfill":
            candles = pd.concat(
                generate_candles(m, "1", "2025-09-01", days * 1440, seed=i, gap_prob=0.05)
                for i, m in enumerate(markets)
            )
            fake = FakeUpbit(candles, rate_limit=10, penalty_after=10**9)
        else:
            fake = FakeUpbit(markets={m: (m, m) for m in markets}, ws_connect_limit=None)
            fake.ws_snapshots = False
        await fake.start()
        conn.send(fake.port)
        loop = asyncio.get_running_loop()
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            if command == "push":
                conn.send(await push(fake, markets, *args))
            elif command == "subscribed":
                await fake.wait_subscribed(timeout=30)
                conn.send(True)
            elif command == "stats":
                conn.send(
                    {"statuses": dict(fake.statuses), "requests": sum(fake.requests.values())}
                )
            else:
                break
        await fake.stop()

    asyncio.run(main())


async def push(fake: FakeUpbit, markets: list[str], rate: float, seconds: float) -> int:
    """Push candle frames round-robin over `markets` at `rate` a second (inf: flat out);
    each carries its send time in `timestamp` (ms)."""
    price = {m: 1000.0 * (i + 1) for i, m in enumerate(markets)}
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = sent + 500 if rate == float("inf") else int(rate * elapsed)
        while sent < due:
            market = markets[sent % len(markets)]
            price[market] *= 1.0 + (0.0005 if sent % 3 else -0.0004)
            now = time.time()
            p = price[market]
            candle = {
                "ts": pd.Timestamp(int(now // 60 * 60), unit="s", tz="UTC"),
                "open": p,
                "high": p * 1.001,
                "low": p * 0.999,
                "close": p,
                "volume": 1.0 + sent % 7,
                "value": p * (1.0 + sent % 7),
                "timestamp": int(now * 1000),
            }
            await fake.push_frame(candle_frame(market, candle))
            sent += 1
        await asyncio.sleep(0.001 if rate != float("inf") else 0)
    return sent


class FakeProcess:
    def __init__(self, mode: str, markets: list[str], days: int = 0) -> None:
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, mode, markets, days), daemon=True)
        self.process.start()
        if not self.conn.poll(120):
            raise RuntimeError("the fake Upbit did not start within 120 s")
        self.port = int(self.conn.recv())

    async def ask(self, *command: Any) -> Any:
        self.conn.send(command)
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    def close(self) -> None:
        self.conn.send(("stop",))
        self.process.join(10)


# --------------------------------------------------------------------------- backfill


async def bench_backfill(seconds: float) -> list[Row]:
    markets = [f"KRW-B{i:02d}" for i in range(20)]
    fake = FakeProcess("backfill", markets, days=4)
    os.environ["UPQUANT_UPBIT_REST_URL"] = f"http://127.0.0.1:{fake.port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            con = connect(Path(tmp) / "backfill.duckdb")
            limiter = RateLimiter()
            starts: list[float] = []
            acquire = limiter.acquire

            async def timed_acquire() -> list[float]:
                slot = await acquire()
                starts.append(time.monotonic())
                return slot

            limiter.acquire = timed_acquire  # type: ignore[method-assign]
            start, end = pd.Timestamp("2025-09-01", tz="UTC"), pd.Timestamp("2025-09-05", tz="UTC")
            began = time.monotonic()
            task = asyncio.create_task(
                fetch_markets(con, markets, "1", start, end, limiter=limiter)
            )
            await asyncio.wait([task], timeout=seconds)
            end_n, end_t = limiter.requests, time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            candles = con.execute("SELECT count(*) FROM candles").fetchall()[0][0]
            con.close()
        stats = await fake.ask("stats")
    finally:
        fake.close()
    # Requests leave in bursts as budget slots free up; measure over whole cycles of the
    # budget after the first 2 s: from request i to request i + k * budget.
    budget = limiter.per_second or 10
    first = next(i for i, t in enumerate(starts) if t - began >= 2.0)
    last = first + (len(starts) - 1 - first) // budget * budget
    steady = (last - first) / (starts[last] - starts[first])
    overall = end_n / (end_t - began)
    rejected = stats["statuses"].get(429, 0) + stats["statuses"].get(418, 0)
    return [
        (
            (
                f"backfill {len(markets)} markets, shared limiter, {end_t - began:.0f} s run"
                f" ({end_n} requests, {candles:,} candles stored)"
            ),
            f"{steady / 10:.3f} of 10 req/s ({steady:.2f} req/s; whole run {overall:.2f})",
            f"≥ {BACKFILL_TARGET}",
            steady / 10 >= BACKFILL_TARGET,
        ),
        ("backfill: 429/418 answered by the fake", f"{rejected}", "0", rejected == 0),
    ]


# --------------------------------------------------------------------------- paging


PAGING_CASES = (  # name, periods (1-minute buckets), gap_prob, buckets from the last to now
    ("dense market (5 % of minutes empty), 4 days", 4 * 1440, 0.05, 0),
    ("thin market (a candle every ~7 minutes), 14 days", 14 * 1440, 6 / 7, 0),
    ("3 days of candles that ended 14 months ago", 3 * 1440, 0.0, 14 * 30 * 1440),
)


async def bench_paging() -> list[Row]:
    """Requests per stored candle of a complete backfill from `since` to now, per shape of
    series: the fake counts the requests; its rate limit is off (counts, not pace)."""
    rows: list[Row] = []
    now = pd.Timestamp.now(tz="UTC").floor("min")
    for i, (name, periods, gap_prob, ago) in enumerate(PAGING_CASES):
        first = now - pd.Timedelta(minutes=periods + ago)
        candles = generate_candles("KRW-BTC", "1", first, periods, seed=i, gap_prob=gap_prob)
        async with FakeUpbit(candles, rate_limit=None) as fake:
            os.environ["UPQUANT_UPBIT_REST_URL"] = fake.rest_url
            with tempfile.TemporaryDirectory() as tmp:
                con = connect(Path(tmp) / "paging.duckdb")
                began = time.monotonic()
                report = await fetch_markets(
                    con, ["KRW-BTC"], "1", first, limiter=RateLimiter(per_second=1000)
                )
                seconds = time.monotonic() - began
                stored = con.execute("SELECT count(*) FROM candles").fetchall()[0][0]
                con.close()
            asked = fake.requests["/v1/candles/minutes/1"]
        ideal = -(-len(candles) // 200)
        rows.append(
            (
                (
                    f"backfill requests per stored candle: {name} ({stored:,} of"
                    f" {len(candles):,} candles, {asked:,} requests, ideal {ideal:,};"
                    f" {seconds:.1f} s unpaced)"
                ),
                f"{asked / max(stored, 1):.4f} req/candle",
                f"≤ {(ideal + 2) / len(candles):.4f}",
                stored == len(candles) and asked <= ideal + 2 and report.stopped is None,
            )
        )
    return rows


# --------------------------------------------------------------------------- live


async def bench_live(markets_n: int, seconds: float, rates: list[float]) -> list[Row]:
    markets = [f"KRW-M{i:03d}" for i in range(markets_n)]
    fake = FakeProcess("live", markets)
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            con = connect(Path(tmp) / "live.duckdb")
            feed = LiveFeed(
                con,
                markets,
                ws_url=f"ws://127.0.0.1:{fake.port}/websocket/v1",
                backfill=False,
                origin=lambda frame: frame["timestamp"] / 1000.0,
            )
            task = asyncio.create_task(feed.run())
            await fake.ask("subscribed")
            for rate in rates:
                feed.stats.latencies.clear()
                before, flushes = feed.stats.candle_frames, feed.stats.flushes
                began = time.monotonic()
                pusher = asyncio.create_task(fake.ask("push", rate, seconds))
                last_n, last_t = before, began
                while not pusher.done() or time.monotonic() - last_t < 0.5:
                    await asyncio.sleep(0.05)
                    if feed.stats.candle_frames != last_n:
                        last_n, last_t = feed.stats.candle_frames, time.monotonic()
                    if time.monotonic() - began > seconds + 30:
                        break
                sent = pusher.result() if pusher.done() else -1
                await asyncio.sleep(feed.writer.interval * 2)  # the last batch is stored
                got = feed.stats.candle_frames - before
                taken = got / (last_t - began)
                p50, p99 = feed.stats.latency(0.5), feed.stats.latency(0.99)
                offered = "flat out" if rate == float("inf") else f"{rate:,.0f}/s offered"
                batches = feed.stats.flushes - flushes
                rows.append(
                    (
                        (
                            f"live {markets_n} markets, one socket, store writing ({offered};"
                            f" {got:,} of {sent:,} frames, {batches} batches)"
                        ),
                        f"{taken:,.0f} frames/s; p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
                        f"≥ {LIVE_TARGET:,}/s, p99 ≤ {LATENCY_TARGET_S:.0f} s",
                        taken >= LIVE_TARGET * 0.98 and p99 <= LATENCY_TARGET_S and got == sent
                        if rate >= LIVE_TARGET
                        else None,
                    )
                )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            con.close()
    finally:
        fake.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backfill-seconds", type=float, default=15.0)
    parser.add_argument("--live-seconds", type=float, default=6.0)
    parser.add_argument("--markets", type=int, default=200)
    parser.add_argument("--rates", default="2000,4000,inf", help="offered frames/s, inf = max")
    parser.add_argument("--only", default="import,backfill,paging,live")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    table: list[Row] = []
    if "import" in parts:
        table += bench_import(args.rows, args.runs)
    if "backfill" in parts:
        table += asyncio.run(bench_backfill(args.backfill_seconds))
    if "paging" in parts:
        table += asyncio.run(bench_paging())
    if "live" in parts:
        rates = [float(r) for r in args.rates.split(",")]
        table += asyncio.run(bench_live(args.markets, args.live_seconds, rates))
    print_table(table, f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
