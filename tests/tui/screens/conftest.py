"""Frozen data for the workstation's screens: one real store, built once per test session,
copied for each test, with every wall-clock time in it fixed (snapshots never change).

The store (`frozen_home`, a copy per test, UPQUANT_HOME pointing at it):
- candles: the last 2,000 1-minute candles of KRW-BTC and KRW-ETH from ../shared/data
  (2025-10-02 16:00 .. 2025-10-04 01:19 UTC) and the last 1,000 60-minute candles of each
  (2025-08-19 08:00 .. 2025-09-29 23:00 UTC);
- models (real XGBoost on KRW-BTC 1m, seed 0, cpu, labels: a 0.04 % move in 10 candles):
  `xgboost-KRW-BTC-1` version 1 (20 trees) is the **champion**, version 2 (30 trees) the
  **challenger**; KRW-ETH and the 60-minute units have none. `alias_history` of KRW-BTC 1m
  has two moves (champion v1, challenger v2, by the user). Both training runs are in
  `training_runs` (status `finished`, test metrics; XGBoost logs no epochs). No job was
  started through the facade (a worker process: too slow for a fixture): a test that needs
  a running job starts one;
- one replay of the last 200 1-minute candles of both markets through the real live engine
  (engine.live.session.open_session offline, threshold 0.45: the champion decides KRW-BTC,
  the SMA-cross rule KRW-ETH): 400 signals (mode "replay"; KRW-BTC buys, KRW-ETH a buy and
  a sell), the prediction log of champion and challenger, and the paper book of account
  "replay": KRW-ETH bought and sold (realised PnL > 0), KRW-BTC open (all the cash in it);
- every wall-clock time (models' created_at, alias moves, training runs' started/finished/
  heartbeat, paper accounts' created/updated, series times, strategy specs, schema
  versions) set to fixed values on 2025-10-03 (UTC), before FROZEN_NOW.

`FROZEN_NOW` (2025-10-04 01:20 UTC, a minute after the last 1-minute candle) is the app's
clock in `frozen_app`. Fixtures: `frozen_home` (the copy's path), `frozen_ws` (a Workstation
on it, closed after the test), `frozen_app(start="markets", **kw)` (an UpquantApp with that
facade, the frozen clock and a deterministic session: the last APP_REPLAYED (30) KRW-BTC 1m
candles of the store, after the engine's window, replayed at once through the real engine with the champion, writing nothing to
the store, then ending). `settle(pilot)` waits for the session's replay and every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from textual.pilot import Pilot
from textual.worker import WorkerCancelled, WorkerFailed

from tests.conftest import DATA, shared_candles

MARKETS = ("KRW-BTC", "KRW-ETH")
MARKET, UNIT = "KRW-BTC", "1"
FROZEN_NOW = datetime(2025, 10, 4, 1, 20, tzinfo=UTC)
BUILT_AT = datetime(2025, 10, 3, 9, 0, tzinfo=UTC)  # the first wall-clock time in the store
MINUTE_CANDLES, HOUR_CANDLES = 2000, 1000
REPLAYED = 200  # 1-minute candles of each market the stored replay plays
APP_REPLAYED = 30  # and the app's session (after its window: the chart shows both)
THRESHOLD = 0.45  # the replays' (stored and the app's): the champion buys KRW-BTC
CHAMPION_TREES, CHALLENGER_TREES = 20, 30
LABEL_THRESHOLD = 0.0004  # buy/sell above a 0.04 % move in 10 minutes (more than holds)


def _tail(name: str, rows: int, market: str, unit: str) -> pd.DataFrame:
    frame = shared_candles(name, None, market=market, unit=unit)
    return frame.iloc[-rows:].reset_index(drop=True)


def _train(con: Any, trees: int) -> Any:
    from engine.research.labels import LabelSpec
    from engine.training.train import train_model

    labels = LabelSpec(horizon=10, threshold=LABEL_THRESHOLD)
    params = {"n_estimators": trees, "max_depth": 3, "seed": 0, "device": "cpu"}
    return train_model(
        con, "xgboost", MARKET, UNIT, params=params, label_spec=labels, promote=False
    ).model


async def _replay(con: Any) -> None:
    from engine.live.session import open_session

    session = await open_session(
        con,
        list(MARKETS),
        UNIT,
        offline=True,
        replay_delay=0,
        replay_candles=REPLAYED,
        threshold=THRESHOLD,
    )
    await session.runner


def _at(minutes: float) -> datetime:
    return BUILT_AT + timedelta(minutes=minutes)


def _freeze(con: Any) -> None:
    """Every wall-clock time in the store to a fixed value (ordered as they happened)."""
    con.execute("UPDATE models SET created_at = ? + to_minutes(id * 60)", [_at(0)])
    con.execute(
        "UPDATE training_runs SET started = ? + to_minutes(id * 60),"
        " finished = CASE WHEN finished IS NULL THEN NULL ELSE ? + to_minutes(id * 60 + 2) END,"
        " heartbeat = CASE WHEN heartbeat IS NULL THEN NULL"
        " ELSE ? + to_minutes(id * 60 + 2) END",
        [_at(-1), _at(-1), _at(-1)],
    )
    con.execute("UPDATE alias_events SET moved_at = ? + to_minutes(id * 60 + 5)", [_at(0)])
    con.execute("UPDATE paper_accounts SET created_at = ?, updated_at = ?", [_at(600), _at(610)])
    con.execute("UPDATE candle_coverage SET fetched_at = ?", [_at(-60)])
    con.execute("UPDATE candle_series SET updated_at = ?", [_at(-60)])
    con.execute("UPDATE strategy_specs SET created_at = ?", [_at(600)])
    con.execute("UPDATE ops_settings SET updated_at = ?", [_at(-60)])
    con.execute("UPDATE drift_events SET detected_at = ?", [_at(610)])
    con.execute("UPDATE predictions SET resolved_at = ? WHERE resolved_at IS NOT NULL", [_at(610)])
    con.execute("UPDATE api_tokens SET created = ?, last_used = NULL", [_at(-60)])
    con.execute("UPDATE schema_version SET applied_at = ?", [_at(-60)])


def build_frozen_store(home: Path) -> None:
    """The store described in the module docstring, in `home` (UPQUANT_HOME while building)."""
    from store.candles import upsert_candles
    from store.db import connect
    from store.registry import move_alias

    before = os.environ.get("UPQUANT_HOME")
    os.environ["UPQUANT_HOME"] = str(home)
    try:
        con = connect()
        try:
            for market in MARKETS:
                upsert_candles(con, _tail(f"{market}_1m.csv", MINUTE_CANDLES, market, "1"))
                upsert_candles(con, _tail(f"{market}_60m.csv", HOUR_CANDLES, market, "60"))
            champion = _train(con, CHAMPION_TREES)
            move_alias(con, champion.id, "champion", reason="frozen fixture: first model")
            challenger = _train(con, CHALLENGER_TREES)
            move_alias(con, challenger.id, "challenger", reason="frozen fixture: more trees")
            with ThreadPoolExecutor(1) as pool:  # its own event loop, whoever calls
                pool.submit(asyncio.run, _replay(con)).result()
            _freeze(con)
            con.execute("CHECKPOINT")
        finally:
            con.close()
    finally:
        if before is None:
            os.environ.pop("UPQUANT_HOME", None)
        else:
            os.environ["UPQUANT_HOME"] = before


@pytest.fixture(scope="session")
def frozen_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built store (never used directly: each test gets a copy)."""
    if not (DATA / "KRW-BTC_1m.csv").exists():
        pytest.skip(f"shared data {DATA} is not present")
    home = tmp_path_factory.mktemp("frozen-store")
    build_frozen_store(home)
    return home


@pytest.fixture
def frozen_home(frozen_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the frozen store for this test; UPQUANT_HOME points at it."""
    home = tmp_path / "frozen-home"
    shutil.copytree(frozen_store, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    monkeypatch.delenv("UPQUANT_ARTIFACT_KEY", raising=False)
    monkeypatch.delenv("UPQUANT_ARTIFACT_KEY_FILE", raising=False)
    return home


@pytest.fixture
def frozen_ws(frozen_home: Path) -> Iterator[Any]:
    """A Workstation (in process) on the frozen store's copy."""
    from engine.server.runner import stop_workstation
    from engine.service import Workstation

    ws = Workstation()
    yield ws
    stop_workstation(ws)


def frozen_session(
    ws: Any, market: str = MARKET, unit: str = UNIT, candles: int = APP_REPLAYED
) -> Callable[[], Any]:
    """A session factory: the last `candles` stored candles of `market` replayed at once
    through the real engine (its champion seated), writing nothing to the store."""

    async def factory() -> Any:
        from engine.live.engine import LiveEngine
        from engine.live.inference import load_champion
        from engine.live.session import Session
        from engine.live.sources import replay
        from store.candles import load_candles

        con = ws.con()
        model, reason = await asyncio.to_thread(load_champion, con, market, unit)
        engine = LiveEngine(
            con,
            market,
            unit,
            model=model,
            mode="replay",
            threshold=THRESHOLD,
            persist_signals=False,
            log_predictions=False,
            no_model_reason=reason,
        )
        frame = load_candles(con, market, unit, last=engine.window + candles)
        engine.prime(frame.iloc[: engine.window])
        banner = f"REPLAY of {candles} stored {market} {unit}m candles (frozen test data)"
        return Session(engine, "replay", banner, replay(engine, frame.iloc[engine.window :]))

    return factory


@pytest.fixture
def frozen_app(frozen_ws: Any) -> Callable[..., Any]:
    """`frozen_app(start="markets", **kw)`: an UpquantApp on the frozen store (facade
    `frozen_ws`, clock FROZEN_NOW, the frozen KRW-BTC 1m replay as its session); `kw` go to
    UpquantApp (e.g. market=, session_factory=, facade= an HttpWorkstation)."""
    from tui.app import UpquantApp

    def make(start: str = "markets", **kw: Any) -> UpquantApp:
        kw.setdefault("session_factory", frozen_session(frozen_ws, kw.get("market", MARKET)))
        kw.setdefault("facade", frozen_ws)
        kw.setdefault("clock", lambda: FROZEN_NOW)
        return UpquantApp(None, start=start, **kw)

    return make


@contextlib.asynccontextmanager
async def served(ws: Any, scope: str, name: str) -> AsyncIterator[Any]:
    """`ws` served on 127.0.0.1 (a real server, port 0) and an HttpWorkstation client of it
    with a new `scope` token named `name`: the facade an attached TUI has."""
    from engine.server.runner import listening
    from store.tokens import create_token
    from tui.client import HttpWorkstation

    token = create_token(ws.con(), name, scope)[1]
    async with listening(ws, "127.0.0.1", 0) as info:
        with HttpWorkstation(info.url, token) as facade:
            yield facade


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until the session's replay and every worker are done (failed ones too) and the
    screen caught up."""
    for _ in range(3):
        for worker in list(pilot.app.workers):
            with contextlib.suppress(WorkerFailed, WorkerCancelled):
                await worker.wait()
        await pilot.pause()
