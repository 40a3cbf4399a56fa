"""Shared fixtures: a fresh store per test and real Upbit candles from ../shared/data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from store.db import connect

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit"

# pytest-xdist runs one worker per core: a worker's torch/XGBoost (and every `upquant` it
# starts) using all cores too oversubscribes the machine, and OpenMP's spinning threads then
# can slow a test many times over (the likely cause of a resumed training run taking
# over 120 s in CI where it takes ~9 s alone)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Training jobs' workers run at the tests' priority: an idle-class one (the default,
# SCHED_IDLE) waits out every CPU-bound test of the other xdist worker, which made each job
# test several times slower. The default's policy has its own tests (test_worker_priority,
# and test_jobs reads the running worker's policy with the variable unset).
os.environ["UPQUANT_JOB_PRIORITY"] = "normal"


def current_minute(margin: float = 15.0, settled: float = 5.0) -> pd.Timestamp:
    """The current UTC minute, at least `settled` seconds into it and with at least `margin`
    seconds of it left (sleeping until both hold). A test that plays live frames for "now"
    must not see the clock pass a minute boundary (the feed closes an ended bucket by the
    clock, a session backfills up to the forming one), nor start within the close grace of
    the previous minute (whose candle may then still be updated, and closes again)."""
    into = time.time() % 60.0
    if 60.0 - into < margin:
        time.sleep(60.0 - into + settled)
    elif into < settled:
        time.sleep(settled - into)
    return pd.Timestamp.now(tz="UTC").floor("min")


def next_minute() -> pd.Timestamp:
    """The start of the next UTC minute, without waiting: a test that plays live frames of
    this bucket and later ones sees none of them late (their buckets end a minute or more
    after it starts) nor closed by the clock (its bucket + the close grace ends after that),
    so it need not wait for a minute boundary as `current_minute` does. For a test whose
    code under test reads the clock for the forming bucket (a session's REST backfill), use
    `current_minute`."""
    return pd.Timestamp.now(tz="UTC").floor("min") + pd.Timedelta(minutes=1)


def shared_candles(name: str, rows: int | None = None, market: str = "KRW-BTC", unit: str = "1") -> pd.DataFrame:
    """The first `rows` candles of a shared CSV in the canonical candle format (value unknown)."""
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} is not present")
    raw = pd.read_csv(path, nrows=rows)
    frame = pd.DataFrame({"market": market, "unit": unit, "ts": pd.to_datetime(raw["timestamp"], utc=True)})
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = raw[col].astype("float64")
    frame["value"] = float("nan")
    return frame


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UPQUANT_HOME", str(tmp_path))
    # a developer's artifact key must not change what the tests write (plain, deterministic)
    monkeypatch.delenv("UPQUANT_ARTIFACT_KEY", raising=False)
    monkeypatch.delenv("UPQUANT_ARTIFACT_KEY_FILE", raising=False)
    return tmp_path


@pytest.fixture
def con(home: Path):
    connection = connect()
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def btc_1m() -> pd.DataFrame:
    return shared_candles("KRW-BTC_1m.csv", 6000)

