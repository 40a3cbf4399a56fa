"""Shared fixtures: a fresh store per test and real Upbit candles from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from store.db import connect

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit"


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
    return tmp_path


@pytest.fixture
def con(home: Path):
    connection = connect()
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def btc_1m() -> pd.DataFrame:
    return shared_candles("KRW-BTC_1m.csv", 6000)
