"""The live path end to end, from the frame that closes a candle to its signal committed in
the store: one market (XGBoost; a 3-model ensemble), 200 markets closing in the same minute
(XGBoost; LSTM), the engine's memory with 200 markets loaded.

A temporary store; models trained small on real KRW-BTC 60-minute candles (../shared/data)
with fixed seeds. The path measured is the user's: the real `engine.data.feed.LiveFeed`
takes the closing frame (`feed.on_frame`, in process: the WebSocket's decoding is not
timed), closes the candle, hands it to the engine (its callback task, as in a session, with
its candle writer flushing every 0.25 s, except while a decision is due or running: then the
write waits, 2 s at most), the engine decides and the signal row is committed in a real
DuckDB file. The passes here follow each other at once, so the writer mostly waits through
the 1-market rows (a live minute has one close: it waits a few ms there); with it writing
during the passes, the 1-market XGBoost p99 was 6.7-7.4 ms (p50 the same). 200 "markets" are cut from the 4 real series (KRW-BTC and KRW-ETH,
1- and 60-minute; each market a different stretch, replayed as 60-minute candles on one
clock so that all of them close in the same minute); every market's champion is the same
registered model (loaded once: models are cached by sha256 and shared across markets).

`one-by-one`: the feed hands each closed candle to its market's own `LiveEngine` (a pass
per market, as a session ran before the multi-market engine); `batched`: the feed's closed
candles go to `MarketsEngine.submit` and one pass decides every market that closed (one
model call per model). A pass is timed from its first closing frame to its last signal
committed; the 200-market rows leave the first pass out of the percentiles (it stores each
lane's strategy spec and fills its feature rows; a row of its own shows it). `--device cuda`
runs the torch models on CUDA ("no CUDA": the rows are left empty). `--profile` then
profiles 1 market and the 200-market pass (cProfile over the passes only, every thread).

    .venv/bin/python scripts/bench_live.py [--quick] [--device cpu|cuda] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchtable import Row, print_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit"
SERIES = ("KRW-BTC_60m.csv", "KRW-ETH_60m.csv", "KRW-BTC_1m.csv", "KRW-ETH_1m.csv")
UNIT = "60"
WIDTH_S = 3600.0
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC: the replayed clock's first bucket
TRAIN_ROWS = 4000
# the table's rows, left empty where they cannot run (`--device cuda` without CUDA)
EMPTY = (
    "1 market, XGBoost, p50 / p99",
    "1 market, ensemble XGBoost+LSTM+Transformer, p50 / p99",
    "1 market, LSTM, p50 / p99",
    "200 markets, XGBoost, one batched pass, p50 / p99",
    "200 markets, XGBoost, one-by-one (a pass per market), p50 / p99",
    "200 markets, LSTM, one batched pass, p50 / p99",
    "200 markets, LSTM, one-by-one (a pass per market), p50 / p99",
    "memory: RSS growth, the XGBoost champion loaded",
    "memory: RSS growth, 200 markets' lanes primed",
)


def _series(name: str, rows: int | None = None):  # type: ignore[no-untyped-def]
    import pandas as pd

    raw = pd.read_csv(DATA / name, nrows=rows)
    frame = pd.DataFrame({"ts": pd.to_datetime(raw["timestamp"], utc=True)})
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = raw[col].astype("float64")
    return frame


def _markets(n: int, length: int, prefix: str = "M") -> dict[str, Any]:
    """`n` markets of `length` candles on one 60-minute clock from START, each a stretch of
    one of the 4 real series (in turn) at its own offset, after the training rows."""
    import pandas as pd

    series = [_series(name) for name in SERIES]
    grid = pd.date_range(pd.Timestamp(START, unit="s", tz="UTC"), periods=length, freq="60min")
    markets = {}
    for i in range(n):
        source = series[i % len(series)]
        per = -(-n // len(series))
        stride = (len(source) - TRAIN_ROWS - length) // max(per - 1, 1)
        if stride <= 0:
            raise SystemExit(f"{SERIES[i % len(series)]} is too short for {n} markets")
        offset = TRAIN_ROWS + (i // len(series)) * stride  # past the training rows
        part = source.iloc[offset : offset + length].reset_index(drop=True)
        market = f"KRW-{prefix}{i:03d}"
        markets[market] = part.assign(ts=grid, market=market, unit=UNIT, value=float("nan"))
    return markets


def _frame(market: str, candle: dict[str, Any]) -> dict[str, Any]:
    """The WebSocket `candle.60m` frame of a candle, as Upbit sends it."""
    return {
        "type": f"candle.{UNIT}m",
        "code": market,
        "candle_date_time_utc": candle["ts"].strftime("%Y-%m-%dT%H:%M:%S"),
        "opening_price": candle["open"],
        "high_price": candle["high"],
        "low_price": candle["low"],
        "trade_price": candle["close"],
        "candle_acc_trade_volume": candle["volume"],
        "candle_acc_trade_price": candle["close"] * candle["volume"],
    }


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Harness:
    """One LiveFeed over `markets` whose closed candles go to `on_closed` (a market's
    engine, the multi-market engine's queue, or a list to decide in one pass), on a clock
    that stands one second into the bucket being sent."""

    def __init__(self, con: Any, markets: dict[str, Any], primed: int) -> None:
        from engine.data.feed import LiveFeed

        self.markets = markets
        self.rows = {m: frame.to_dict("records") for m, frame in markets.items()}
        self.bucket = primed  # the index of the candle that forms next
        self.now = START + primed * WIDTH_S + 1.0
        self.closed: list[dict[str, Any]] = []
        self.errors: list[str] = []  # the feed's error statuses (a callback that raised)
        self.on_closed: Callable[[dict[str, Any]], Any] = self.closed.append
        self.feed = LiveFeed(
            con,
            list(markets),
            UNIT,
            on_closed=lambda candle: self.on_closed(candle),
            on_status=lambda text, level: self.errors.append(text) if level == "error" else None,
            backfill=False,
            clock=lambda: self.now,
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.feed._deliver_events()),  # the feed's callback task
            asyncio.create_task(self.feed.writer.run()),
        ]
        await self.send(list(self.markets))  # the first forming candles: nothing closes

    async def send(self, markets: list[str]) -> None:
        """The next bucket's first frame of each of `markets` (closing the forming candle),
        then wait until the feed's callbacks ran."""
        self.now = START + self.bucket * WIDTH_S + 1.0
        for market in markets:
            self.feed.on_frame(_frame(market, self.rows[market][self.bucket]))
        self.bucket += 1
        await self.feed.drain()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.feed.writer.flush()


def _lane(con: Any, market: str, model: Any, inference: Any) -> Any:
    """A market's LiveEngine (today's engine takes no inference service: then without)."""
    from engine.live.engine import LiveEngine

    if inference is not None and "inference" in getattr(LiveEngine, "__dataclass_fields__", {}):
        return LiveEngine(con, market, UNIT, model=model, mode="live", inference=inference)
    return LiveEngine(con, market, UNIT, model=model, mode="live")


def _driver(kind: str) -> Any:
    """How a batch of closed candles is decided in one pass: the multi-market engine's
    `on_closed_many`, or (before it lands) the engine's `decide_pass`; None: neither."""
    if kind == "markets":
        try:
            from engine.live.markets import MarketsEngine
        except ImportError:
            return None
        return MarketsEngine
    try:
        from engine.live.engine import decide_pass
    except ImportError:
        return None
    return decide_pass


async def _run(
    con: Any,
    markets: dict[str, Any],
    model: Any,
    primed: int,
    passes: int,
    *,
    batched: bool = False,
    inference: Any = None,
    stages: dict[str, list[float]] | None = None,
    profiler: cProfile.Profile | None = None,
) -> list[float]:
    """`passes` minutes of `markets` through the feed into the engine; milliseconds from a
    pass's first closing frame to its last signal committed (SignalEvent: published after
    the signal's INSERT returned). One-by-one: the feed hands each closed candle to its
    market's engine (`LiveEngine.on_closed`, as a session does today). Batched: the closed
    candles of the minute decided in one pass (`MarketsEngine.on_closed_many` when it
    exists, else `decide_pass` over the same lanes). `stages`, for one market: the
    milliseconds from the frame to the engine's callback, and from there to the signal.
    `profiler` runs over the passes only (on Python 3.12 it sees every thread: the event
    loop's and the worker that `asyncio.to_thread` runs features and models in)."""
    from engine.live.engine import SignalEvent

    harness = Harness(con, markets, primed)
    stored: list[float] = []
    entered: list[float] = []

    def signalled(event: Any) -> None:
        if isinstance(event, SignalEvent):
            stored.append(time.perf_counter())

    multi = _driver("markets") if batched else None
    if multi is not None:
        engine = multi(con, UNIT, inference=inference, mode="live")
        for market, frame in markets.items():
            engine.add_market(market, model)
            engine.prime(market, frame.iloc[:primed])
        lanes = dict(engine.lanes)
    else:
        engine = None
        lanes = {}
        for market, frame in markets.items():
            lanes[market] = _lane(con, market, model, inference)
            lanes[market].prime(frame.iloc[:primed])
    for lane in lanes.values():
        lane.subscribe(signalled)

    def closed_one(candle: dict[str, Any]) -> Any:
        entered.append(time.perf_counter())
        return lanes[candle["market"]].on_closed(candle)

    if not batched:
        harness.on_closed = closed_one
    elif engine is not None:  # a session's wiring: the feed's on_closed queues for the pass
        harness.on_closed = engine.submit
        if hasattr(engine, "busy"):  # ... and its periodic write waits while a pass runs
            harness.feed.busy = lambda: engine.busy
    decide_pass = _driver("pass")
    await harness.start()
    passes_ms = []
    if profiler is not None:
        profiler.enable()
    for _ in range(passes):
        stored.clear()
        entered.clear()
        harness.closed.clear()
        began = time.perf_counter()
        await harness.send(list(markets))
        if batched and engine is not None:
            await engine.drain()
        elif batched:
            await decide_pass([(lanes[c["market"]], c) for c in harness.closed])
        if len(stored) != len(markets):
            raise RuntimeError(
                f"{len(stored)} signals for {len(markets)} closed candles: {harness.errors[:3]}"
            )
        passes_ms.append((stored[-1] - began) * 1000)
        if stages is not None and entered:
            stages["frame -> engine callback"].append((entered[0] - began) * 1000)
            stages["engine callback -> signal committed"].append((stored[-1] - entered[0]) * 1000)
    if profiler is not None:
        profiler.disable()
    await harness.stop()
    if engine is not None:
        engine.flush()
    for lane in lanes.values():
        lane.flush()
    return passes_ms


def _train(con: Any) -> dict[str, Any]:
    """XGBoost, LSTM and Transformer models and their soft-vote ensemble, trained small on
    real KRW-BTC 60-minute candles with fixed seeds (the XGBoost one the champion)."""
    from engine.training.train import train_model
    from store.candles import upsert_candles

    train = _series(SERIES[0], TRAIN_ROWS).assign(market="KRW-BTC", unit=UNIT, value=float("nan"))
    upsert_candles(con, train)
    torch_params = {"epochs": 1, "seed": 0, "device": "cpu"}
    records = {
        "xgboost": train_model(
            con, "xgboost", "KRW-BTC", UNIT, params={"seed": 0, "device": "cpu"}
        ),
        "lstm": train_model(con, "lstm", "KRW-BTC", UNIT, params=torch_params),
        "transformer": train_model(con, "transformer", "KRW-BTC", UNIT, params=torch_params),
    }
    members = [r.model.ref for r in records.values()]
    records["ensemble"] = train_model(con, "ensemble", "KRW-BTC", UNIT, members=members)
    return {kind: report.model for kind, report in records.items()}


def _load(records: dict[str, Any], device: str, batch: int) -> tuple[dict[str, Any], Any]:
    """The models loaded, on `device`, warmed (for one window and `batch`), through the
    inference service when there is one (it caches them by sha256); and the service."""
    from engine.live.inference import load_record

    try:
        from engine.live.inference_service import InferenceService
    except ImportError:  # today's engine: direct calls
        loaded = {kind: load_record(record) for kind, record in records.items()}
        for model in loaded.values():
            if device != "cpu":
                for member in [model.model, *getattr(model.model, "members", [])]:
                    if hasattr(member, "to_device"):
                        member.to_device(device)
            model.warm()
        return loaded, None
    service = InferenceService(device=device)
    return {k: service.load_record(r, batch=batch) for k, r in records.items()}, service


def _memory_child(home: str, markets_n: int, primed: int) -> None:
    """Run in a fresh process: RSS (MB) with the store open, then with the XGBoost champion
    loaded (its library's first import included), then with `markets_n` lanes primed with
    `primed` candles each; printed as three numbers and the lanes' count."""
    os.environ["UPQUANT_HOME"] = home
    from engine.live.engine import LiveEngine
    from engine.live.inference import load_champion
    from engine.research.features import warm_up
    from store.db import connect

    con = connect()
    markets = _markets(markets_n, primed)
    warm_up()
    gc.collect()
    base = _rss_mb()
    model, _ = load_champion(con, "KRW-BTC", UNIT)
    assert model is not None
    model.warm()
    gc.collect()
    loaded = _rss_mb()
    engines = []
    for market, frame in markets.items():
        engine = LiveEngine(con, market, UNIT, model=model, mode="live")
        engine.prime(frame)
        engines.append(engine)
    del markets
    gc.collect()
    print(f"{base:.1f} {loaded:.1f} {_rss_mb():.1f} {len(engines)}")
    con.close()


def bench(quick: bool, device: str, profile: bool, footer: str) -> list[Row]:
    home = tempfile.mkdtemp(prefix="upquant-bench-live-")
    os.environ["UPQUANT_HOME"] = home
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # RSI's 0/0 on flat candles
    started = time.perf_counter()
    if device == "cuda":
        from models.devices import cuda_available

        if not cuda_available():
            empty: list[Row] = [("device cuda", "no CUDA (torch sees no GPU)", "-", None)]
            return empty + [(label, "–", "-", None) for label in EMPTY]
    from engine.research.features import warm_up
    from store.db import connect

    one_n, many_n, slow_n = (60, 6, 3) if quick else (300, 30, 10)
    con = connect()
    warm_up()
    records = _train(con)
    models, service = _load(records, device, 200)
    primed = max(m.history_needed for m in models.values()) + 5
    rows: list[Row] = []
    names = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

    def run(n: int, kind: str, passes: int, **options: Any) -> list[float]:
        markets = _markets(n, primed + passes + 2, prefix=next(names))
        return asyncio.run(
            _run(con, markets, models[kind], primed, passes, inference=service, **options)
        )

    def timed(label: str, target: float | None, values: list[float], p50: bool = True) -> None:
        shown = f"{_pct(values, 50):.2f} / {_pct(values, 99):.2f} ms"
        if not p50:
            shown = f"{_pct(values, 50):.1f} / {_pct(values, 99):.1f} ms"
        rows.append(
            (
                f"{label}, p50 / p99 ({len(values)} passes)",
                shown,
                "-" if target is None else f"p99 <= {target:g} ms",
                None if target is None else _pct(values, 99) <= target,
            )
        )

    # 1 market, as a session runs it (one-by-one and batched are the same pass here)
    stages: dict[str, list[float]] = {
        "frame -> engine callback": [],
        "engine callback -> signal committed": [],
    }
    timed("1 market, XGBoost", 5, run(1, "xgboost", one_n, stages=stages))
    for stage, values in stages.items():
        rows.append((f"  {stage}, p50", f"{_pct(values, 50):.2f} ms", "-", None))
    logged = con.execute(
        "SELECT quantile_cont(latency_ms, 0.5), count(*) FROM predictions"
        " WHERE source = 'live' AND role = 'champion' AND market = 'KRW-A000'"
    ).fetchall()[0]  # fetchall: a half-read result blocks the connection's next statement
    if logged[1]:
        rows.append(
            ("  of which features + model call (live log), p50", f"{logged[0]:.2f} ms", "-", None)
        )
    timed("1 market, ensemble XGBoost+LSTM+Transformer", 10, run(1, "ensemble", one_n))
    timed("1 market, LSTM", None, run(1, "lstm", one_n))

    # 200 markets closing in the same minute
    batched = _driver("markets") or _driver("pass")
    how = "MarketsEngine.on_closed_many" if _driver("markets") else "decide_pass" if batched else ""
    for kind, label, target in (("xgboost", "XGBoost", 250), ("lstm", "LSTM", 1000)):
        if batched is None:
            rows.append((f"200 markets, {label}, batched pass", "no batched engine", "-", None))
        else:
            calls, seconds = (service.calls, service.model_seconds) if service else (0, 0.0)
            first, *values = run(200, kind, many_n + 1, batched=True)
            timed(f"200 markets, {label}, one batched pass ({how})", target, values, False)
            rows.append(
                (
                    "  its first pass (specs stored, feature rows filled)",
                    f"{first:.1f} ms",
                    "-",
                    None,
                )
            )
            if service is not None and service.calls > calls:
                made = service.calls - calls
                per_call = (service.model_seconds - seconds) / made * 1000
                call = f"  of which the model call over 200 windows ({made} calls), mean"
                rows.append((call, f"{per_call:.1f} ms", "-", None))
        passes = slow_n if kind == "lstm" or batched is None else many_n // 3
        _, *values = run(200, kind, passes + 1)
        timed(f"200 markets, {label}, one-by-one (a pass per market)", None, values, False)

    con.close()

    # memory: a fresh process, before and after the champion and 200 primed markets
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", home, "--primed", str(primed)],
        capture_output=True,
        text=True,
        check=True,
    )
    base, loaded, primed_mb, lanes = child.stdout.split()[-4:]
    rows.append(
        (
            "memory: RSS growth, the XGBoost champion loaded (its library included)",
            f"{float(loaded) - float(base):.1f} MB (of {float(primed_mb):.0f} MB in all)",
            "-",
            None,
        )
    )
    grown = float(primed_mb) - float(loaded)
    rows.append(
        (
            f"memory: RSS growth, {lanes} markets' lanes primed ({primed} candles each)",
            f"{grown:.1f} MB ({grown * 1024 / int(lanes):.0f} KB a market)",
            "-",
            None,
        )
    )
    rows.append(("bench wall time", f"{time.perf_counter() - started:.0f} s", "-", None))
    load = os.getloadavg()[0]  # p99s on a shared machine move with what else runs
    rows.append(
        (
            "machine: 1-minute load average at the end",
            f"{load:.1f} on {os.cpu_count()} CPUs",
            "-",
            None,
        )
    )
    if profile:  # where the time goes, after the table (a profile slows what it sees)
        print_table(rows, footer)
        rows = []
        con = connect()
        # the batched pass; today's engine has none: two passes market by market
        many: tuple[int, dict[str, Any]] = (many_n, {"batched": True}) if batched else (2, {})
        for n, passes, options in ((1, one_n, {}), (200, *many)):
            markets = _markets(n, primed + passes + 2, prefix=next(names))
            profiler = cProfile.Profile()
            asyncio.run(
                _run(
                    con,
                    markets,
                    models["xgboost"],
                    primed,
                    passes,
                    inference=service,
                    profiler=profiler,
                    **options,
                )
            )
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(22)
            body = [line for line in text.getvalue().splitlines() if line.strip()]
            print(
                f"\n== profile: {n} market(s), XGBoost, {passes} passes, every thread, by own"
                " time (epoll/lock waits are idle time) =="
            )
            print("\n".join(body))
        con.close()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer passes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then cProfile 1 market and a 200-market pass (after the table)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--primed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, 200, args.primed)
        sys.exit(0)
    footer = (
        f"bench_live ({args.device}): LiveFeed.on_frame (in process) -> engine -> signal"
        " committed in DuckDB; 200 markets cut from KRW-BTC/KRW-ETH 1m and 60m series at"
        " different offsets, replayed as 60m candles on one clock; one shared champion"
    )
    table = bench(args.quick, args.device, args.profile, footer)
    if table:
        print_table(table, footer)
