"""The data layer (engine/data/candles.py, store/candles.py, `upquant data ...`): file import in three
formats with validation, resumable multi-market backfill against the fake Upbit (killed and
resumed), export round trips, SQL resampling, status with gaps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.data.backfill import fetch_markets
from engine.data.candles import DataImportError, ValidationFailed, import_candles
from engine.data.series import DataError, resample_series, series_status
from engine.upbit.client import RateLimiter
from engine.upbit.errors import UpbitBlocked, UpbitError
from store.candles import (
    CANDLE_COLUMNS,
    add_coverage,
    coverage,
    export_candles,
    load_candles,
    missing_ranges,
    upsert_candles,
)
from store.db import connect
from tests.conftest import DATA, next_minute
from tests.fake_upbit import FakeUpbit, generate_candles, load_csv_candles, resample_candles

UPQUANT = str(Path(sys.executable).with_name("upquant"))
VALUES = ["open", "high", "low", "close", "volume", "value"]


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    """Two days of real KRW-BTC 1-minute candles (value estimated as close x volume)."""
    frame = load_csv_candles(DATA / "KRW-BTC_1m.csv", "KRW-BTC")
    return frame[frame["ts"] < utc("2025-09-03")].reset_index(drop=True)


def stored(con: Any, market: str, unit: str) -> pd.DataFrame:
    frame = load_candles(con, market, unit)
    frame["ts"] = frame["ts"].dt.as_unit("ns")
    return frame[CANDLE_COLUMNS].reset_index(drop=True)


def same_candles(got: pd.DataFrame, want: pd.DataFrame) -> None:
    want = want[CANDLE_COLUMNS].reset_index(drop=True).copy()
    want["ts"] = want["ts"].dt.as_unit("ns")
    got = got[CANDLE_COLUMNS].reset_index(drop=True).copy()
    got["ts"] = got["ts"].dt.as_unit("ns")
    for col in ("market", "unit"):
        got[col], want[col] = got[col].astype(str), want[col].astype(str)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def upquant(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UPQUANT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "UPQUANT_HOME": str(home), **(env or {})},
    )


# --------------------------------------------------------------------------- import formats


def test_import_detects_shared_pyupbit_and_upbit_formats(
    con, tmp_path: Path, btc: pd.DataFrame
) -> None:
    part = btc.head(300)
    shared = tmp_path / "shared.csv"
    part.assign(timestamp=part["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"))[
        ["timestamp", "open", "high", "low", "close", "volume"]
    ].to_csv(shared, index=False)
    report = import_candles(con, shared, "KRW-BTC", "1")
    assert (report.format, report.rows_new, report.rows_rejected) == ("shared", 300, 0)
    want = part.assign(value=np.nan)
    same_candles(stored(con, "KRW-BTC", "1"), want)

    # pyupbit: the index is the open time in KST without a zone, `value` is KRW traded.
    kst = part.set_index(part["ts"].dt.tz_convert("Asia/Seoul").dt.tz_localize(None))[VALUES]
    kst.index.name = None
    kst.to_csv(tmp_path / "pyupbit.csv")
    kst.to_parquet(tmp_path / "pyupbit.parquet")
    for name in ("pyupbit.csv", "pyupbit.parquet"):
        report = import_candles(con, tmp_path / name, "KRW-ETH", "1")
        assert (report.format, report.rows_read, report.rows_rejected) == ("pyupbit", 300, 0)
    same_candles(stored(con, "KRW-ETH", "1"), part.assign(market="KRW-ETH"))


def rest_dump(fake: FakeUpbit, path: str, **params: str) -> list[dict[str, Any]]:
    url = f"{fake.rest_url}{path}?" + "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_import_upbit_rest_dumps_takes_market_and_unit_from_the_file(
    con, tmp_path: Path, btc: pd.DataFrame
) -> None:
    days = resample_candles(btc, "D")
    with FakeUpbit([btc, days]).run_in_thread() as fake:
        minutes = rest_dump(
            fake, "/v1/candles/minutes/15", market="KRW-BTC", count="96", to="2025-09-02T00:00:00Z"
        )
        daily = rest_dump(
            fake, "/v1/candles/days", market="KRW-BTC", count="2", to="2025-09-03T00:00:00Z"
        )
    assert minutes[0]["candle_date_time_utc"] > minutes[-1]["candle_date_time_utc"]  # newest first
    (tmp_path / "m15.json").write_text(json.dumps(minutes))
    (tmp_path / "days.json").write_text(json.dumps(daily))
    pd.DataFrame(minutes).to_parquet(tmp_path / "m15.parquet")

    report = import_candles(con, tmp_path / "m15.json")
    assert (report.format, report.series, report.rows_new, report.rows_rejected) == (
        "upbit",
        ["KRW-BTC 15"],
        96,
        0,
    )
    want = resample_candles(btc, "15")
    same_candles(stored(con, "KRW-BTC", "15"), want[want["ts"] < utc("2025-09-02")])
    assert import_candles(con, tmp_path / "m15.parquet").rows_new == 0
    report = import_candles(con, tmp_path / "days.json")
    assert report.series == ["KRW-BTC D"]
    same_candles(stored(con, "KRW-BTC", "D"), days)

    with pytest.raises(DataImportError, match="holds KRW-BTC but --market says KRW-ETH"):
        import_candles(con, tmp_path / "m15.json", "KRW-ETH")
    with pytest.raises(DataImportError, match="unit 15 candles but --unit says 1"):
        import_candles(con, tmp_path / "m15.json", unit="1")


def test_import_needs_market_and_unit_when_the_file_lacks_them(
    con, tmp_path: Path, btc: pd.DataFrame
) -> None:
    path = tmp_path / "x.csv"
    naive = btc.head(5).assign(timestamp=btc["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    naive[["timestamp", *VALUES]].to_csv(path, index=False)
    with pytest.raises(DataImportError, match="does not say which market it holds; pass --market"):
        import_candles(con, path, unit="1")
    with pytest.raises(
        DataImportError, match="does not say which candle unit it holds; pass --unit"
    ):
        import_candles(con, path, "KRW-BTC")
    (tmp_path / "odd.csv").write_text("when,o,h\n1,2,3\n")
    with pytest.raises(DataImportError, match="cannot tell the file's format"):
        import_candles(con, tmp_path / "odd.csv", "KRW-BTC", "1")
    with pytest.raises(DataImportError, match="pyupbit format needs"):
        import_candles(con, tmp_path / "odd.csv", "KRW-BTC", "1", fmt="pyupbit")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataImportError, match="unknown file type"):
        import_candles(con, tmp_path / "x.xlsx", "KRW-BTC", "1")
    # --format overrides detection: the same columns read as pyupbit are KST.
    report = import_candles(con, path, "KRW-BTC", "1", fmt="pyupbit")
    assert report.format == "pyupbit"
    assert load_candles(con, "KRW-BTC", "1")["ts"].iloc[0] == btc["ts"].iloc[0] - pd.Timedelta(
        hours=9
    )


# --------------------------------------------------------------------------- validation


@pytest.fixture
def bad_file(tmp_path: Path, btc: pd.DataFrame) -> Path:
    """20 candles with one problem in each of rows 2..10 (CSV line numbers)."""
    frame = btc.head(20).rename(columns={"ts": "timestamp"})[["timestamp", *VALUES]].copy()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    frame.loc[0, "high"] = frame.loc[0, "low"] - 1  # line 2
    frame.loc[1, "close"] = np.nan  # line 3
    frame.loc[2, "open"] = 0.0  # line 4
    frame.loc[3, "close"] = frame.loc[3, "high"] * 1.01  # line 5
    frame.loc[4, "volume"] = -1.0  # line 6
    frame.loc[5, "timestamp"] = "2025-09-01 00:05:30"  # line 7: off the 1-minute grid
    frame.loc[6, "timestamp"] = frame.loc[7, "timestamp"]  # line 9 repeats line 8's stamp
    frame.loc[9, "timestamp"] = "2025-08-31 23:59:00"  # line 11: earlier than line 10
    frame.loc[10, "timestamp"] = "yesterday"  # line 12
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def test_validation_rejects_bad_rows_and_imports_the_rest(con, bad_file: Path) -> None:
    report = import_candles(con, bad_file, "KRW-BTC", "1")
    assert report.problems == {
        "bad timestamp": 1,
        "NaN or non-positive price": 2,
        "high < low": 1,
        "open/close outside [low, high]": 3,  # lines 2 and 4 too: open above high, open 0
        "negative or NaN volume": 1,
        "off the unit's grid": 1,
        "duplicate timestamp": 1,
        "unsorted timestamp": 1,
    }
    assert report.rows_rejected == 9 and report.rows_new == 11
    assert report.examples == [
        "row 2 (high < low)",
        "row 2 (open/close outside [low, high])",
        "row 3 (NaN or non-positive price)",
        "row 4 (NaN or non-positive price)",
        "row 4 (open/close outside [low, high])",
        "row 5 (open/close outside [low, high])",
        "row 6 (negative or NaN volume)",
        "row 7 (off the unit's grid)",
        "row 9 (duplicate timestamp)",
        "row 11 (unsorted timestamp)",
    ]
    assert len(load_candles(con, "KRW-BTC", "1")) == 11


def test_strict_import_rejects_the_whole_file_and_writes_nothing(
    con, bad_file: Path, btc: pd.DataFrame
) -> None:
    upsert_candles(con, btc.tail(5))
    with pytest.raises(ValidationFailed, match="9 of 20 rows fail validation") as caught:
        import_candles(con, bad_file, "KRW-BTC", "1", strict=True)
    assert caught.value.report.written is False and caught.value.report.rows_new == 0
    assert len(load_candles(con, "KRW-BTC", "1")) == 5  # nothing written, nothing lost


def test_newest_first_files_are_sorted_not_rejected(con, tmp_path: Path, btc: pd.DataFrame) -> None:
    path = tmp_path / "desc.csv"
    btc.head(50).iloc[::-1].rename(columns={"ts": "timestamp"})[["timestamp", *VALUES]].to_csv(
        path, index=False
    )
    report = import_candles(con, path, "KRW-BTC", "1")
    assert (report.rows_new, report.rows_rejected) == (50, 0)


def test_day_candles_must_start_at_midnight_utc(con, tmp_path: Path) -> None:
    frame = generate_candles("KRW-BTC", "D", "2025-09-01", 5)
    frame.loc[2, "ts"] += pd.Timedelta(hours=9)  # a KST midnight read as UTC
    path = tmp_path / "days.csv"
    frame.rename(columns={"ts": "timestamp"})[["timestamp", *VALUES]].to_csv(path, index=False)
    report = import_candles(con, path, "KRW-BTC", "D")
    assert report.problems == {"off the unit's grid": 1} and report.rows_new == 4


# --------------------------------------------------------------------------- export, resample, status


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trips_through_import(
    con, tmp_path: Path, btc: pd.DataFrame, suffix: str
) -> None:
    upsert_candles(con, btc)
    path = tmp_path / f"out{suffix}"
    assert export_candles(con, "KRW-BTC", "1", path) == len(btc)
    other = connect(tmp_path / "other.duckdb")
    report = import_candles(other, path, "KRW-BTC", "1")
    assert (report.format, report.rows_new, report.rows_rejected) == ("shared", len(btc), 0)
    same_candles(stored(other, "KRW-BTC", "1"), stored(con, "KRW-BTC", "1"))
    other.close()


@pytest.mark.parametrize("to_unit", ["3", "15", "60", "240", "D"])
def test_resample_matches_upbit_buckets(con, btc: pd.DataFrame, to_unit: str) -> None:
    gappy = btc[np.random.default_rng(1).random(len(btc)) > 0.1]  # quiet minutes: no candle
    upsert_candles(con, gappy)
    report = resample_series(con, "KRW-BTC", "1", to_unit)
    want = resample_candles(gappy, to_unit)
    assert report.written == report.new == len(want)
    got = stored(con, "KRW-BTC", to_unit)
    pd.testing.assert_frame_equal(
        got[VALUES], want[VALUES].reset_index(drop=True), check_exact=False, rtol=1e-12
    )
    assert (got["ts"] == want["ts"].dt.as_unit("ns").reset_index(drop=True)).all()
    assert resample_series(con, "KRW-BTC", "1", to_unit).new == 0  # idempotent


def test_resample_by_hand_and_refuses_units_that_do_not_fit(con) -> None:
    rows = pd.DataFrame(
        {
            "market": "KRW-BTC",
            "unit": "1",
            "ts": pd.to_datetime(
                ["2025-09-01 00:14", "2025-09-01 00:15", "2025-09-01 00:16", "2025-09-01 00:29"],
                utc=True,
            ),
            "open": [10.0, 20.0, 21.0, 22.0],
            "high": [11.0, 25.0, 22.0, 23.0],
            "low": [9.0, 19.0, 18.0, 21.0],
            "close": [10.5, 21.0, 22.0, 22.5],
            "volume": [1.0, 2.0, 3.0, 4.0],
            "value": [10.0, 40.0, 63.0, 90.0],
        }
    )
    upsert_candles(con, rows)
    resample_series(con, "KRW-BTC", "1", "15")
    got = stored(con, "KRW-BTC", "15")
    assert list(got["ts"]) == [utc("2025-09-01 00:00"), utc("2025-09-01 00:15")]
    assert got.iloc[1][VALUES].tolist() == [20.0, 25.0, 18.0, 22.5, 9.0, 193.0]
    with pytest.raises(DataError, match="whole number"):
        resample_series(con, "KRW-BTC", "10", "15")
    with pytest.raises(DataError, match="no KRW-ETH unit 1 candles"):
        resample_series(con, "KRW-ETH", "1", "15")


def test_status_reports_rows_gaps_and_last_update(con, btc: pd.DataFrame) -> None:
    part = btc.head(100)
    holes = part.drop(index=[10, 20, 21, 40, 41, 42, 43, 44])  # runs of 1, 2 and 5 minutes
    upsert_candles(con, holes)
    status = series_status(con).to_dict("records")[0]
    assert (status["rows"], status["missing"], status["gaps"], status["longest_gap"]) == (
        92,
        8,
        2,
        5,
    )
    assert status["longest_gap_start"] == part["ts"][40]
    assert status["first"] == part["ts"][0] and status["last"] == part["ts"][99]
    assert pd.Timestamp.now(tz="UTC") - status["last_update"] < pd.Timedelta(minutes=1)
    assert series_status(con, min_gap=1).loc[0, "gaps"] == 3
    with pytest.raises(DataError):
        series_status(con, min_gap=0)


def test_missing_ranges_and_coverage_merge(con) -> None:
    day = pd.Timedelta(days=1)
    t0 = utc("2025-09-01")
    add_coverage(con, "KRW-BTC", "1", t0, t0 + day)
    add_coverage(con, "KRW-BTC", "1", t0 + 2 * day, t0 + 3 * day)
    assert missing_ranges(coverage(con, "KRW-BTC", "1"), t0 - day, t0 + 4 * day) == [
        (t0 - day, t0),
        (t0 + day, t0 + 2 * day),
        (t0 + 3 * day, t0 + 4 * day),
    ]
    add_coverage(con, "KRW-BTC", "1", t0 + day, t0 + 2 * day)
    assert coverage(con, "KRW-BTC", "1") == [(t0, t0 + 3 * day)]


# --------------------------------------------------------------------------- backfill


@pytest.fixture(scope="module")
def three_markets() -> pd.DataFrame:
    """Three markets, two days of 1-minute candles each with no-trade gaps."""
    return pd.concat(
        generate_candles(m, "1", "2025-09-01", 2880, seed=i, gap_prob=0.2, price=10.0 ** (i + 3))
        for i, m in enumerate(["KRW-BTC", "KRW-ETH", "KRW-XRP"])
    )


async def test_fetch_many_markets_is_complete_and_resumes_from_coverage(
    con, three_markets: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    markets = ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
    since, until = utc("2025-09-01"), utc("2025-09-03")
    async with FakeUpbit(three_markets, rate_limit=100) as fake:  # the pace is tested below
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        limiter = RateLimiter()
        first = await fetch_markets(
            con, markets[:2], "1", since, utc("2025-09-02"), limiter=limiter
        )

        def pages(market: str, lo: str, hi: str) -> int:  # 200 candles a page, gaps skipped
            ts = three_markets.loc[three_markets["market"] == market, "ts"]
            return -(-int(((ts >= utc(lo)) & (ts < utc(hi))).sum()) // 200)

        day1 = [pages(m, "2025-09-01", "2025-09-02") for m in markets[:2]]
        assert first.requests == sum(day1) < 2 * 8 and first.stopped is None  # 8: 1,440 buckets
        # Day 1 of BTC and ETH is covered: only the rest is asked.
        fake.reset_counters()
        second = await fetch_markets(con, markets, "1", since, until, limiter=limiter)
        rest = [pages(m, "2025-09-02", "2025-09-03") for m in markets[:2]]
        rest.append(pages("KRW-XRP", "2025-09-01", "2025-09-03"))
        assert second.requests == sum(rest) == fake.requests["/v1/candles/minutes/1"]
        again = await fetch_markets(con, markets, "1", since, until, limiter=limiter)
        assert again.requests == 0 and again.new == 0
    assert fake.rate_limited == 0
    for market in markets:
        same_candles(stored(con, market, "1"), fake.candles(market))
    assert second.new + first.new == len(three_markets)


async def test_fetch_unknown_market_fails_alone_and_418_stops_the_run(
    con, three_markets: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeUpbit(three_markets, block_seconds=90) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        report = await fetch_markets(
            con, ["KRW-NOPE", "KRW-BTC"], "1", utc("2025-09-01"), utc("2025-09-01 12:00")
        )
        assert [s.market for s in report.failed] == ["KRW-NOPE"]
        assert isinstance(report.failed[0].error, UpbitError) and "KRW-NOPE" in str(
            report.failed[0].error
        )
        assert report.series[1].done and report.series[1].candles > 0

        fake.fail_next(1, status=418)
        report = await fetch_markets(con, ["KRW-ETH"], "1", utc("2025-09-01"), utc("2025-09-02"))
    assert isinstance(report.stopped, UpbitBlocked)
    assert report.stopped.seconds == 90
    assert "blocked this IP for 90 s, until" in str(report.stopped)
    assert fake.requests["/v1/candles/minutes/1"] <= 1 + 4 + 4  # stops at once: no more asks


async def test_fetch_every_unit_across_gaps_and_day_boundaries_and_resample_agrees(
    con, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = generate_candles("KRW-BTC", "1", "2025-08-20", 15 * 1440, seed=3, gap_prob=0.3)
    hole = (base["ts"] >= utc("2025-08-25 07:00")) & (base["ts"] < utc("2025-08-26 02:00"))
    base = base[~hole]
    minutes = connect(tmp_path / "minutes.duckdb")
    since, until = utc("2025-08-24 05:00"), utc("2025-08-27 17:00")
    async with FakeUpbit(base, rate_limit=100) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        await fetch_markets(minutes, ["KRW-BTC"], "1", utc("2025-08-24"), utc("2025-08-28"))
        for unit in ("3", "5", "10", "15", "30", "60", "240", "D"):
            report = await fetch_markets(con, ["KRW-BTC"], unit, since, until)
            want = fake.candles("KRW-BTC", unit)
            want = want[(want["ts"] >= since) & (want["ts"] < until)]
            same_candles(stored(con, "KRW-BTC", unit), want)
            assert report.new == len(want) and report.failed == []
            # What Upbit serves for the unit is what resampling its 1-minute candles gives.
            resample_series(minutes, "KRW-BTC", "1", unit)
            built = stored(minutes, "KRW-BTC", unit)
            same_candles(built[(built["ts"] >= since) & (built["ts"] < until)], want)
    minutes.close()
    assert fake.rate_limited == 0


@pytest.mark.slow
async def test_backfill_runs_at_nine_tenths_of_the_budget_without_429(
    con, three_markets: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeUpbit(three_markets) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        started = time.monotonic()
        answered: list[float] = []  # when the first page came back (the start-up excluded)

        def first_page(report: Any) -> None:
            if report.chunks_done and not answered:
                answered.append(time.monotonic())

        report = await fetch_markets(
            con,
            ["KRW-BTC", "KRW-ETH"],
            "1",
            utc("2025-09-01"),
            utc("2025-09-03"),
            on_progress=first_page,
        )
        ended = time.monotonic()
    n = report.requests
    want = sum(-(-int((three_markets["market"] == m).sum()) // 200) for m in ("KRW-BTC", "KRW-ETH"))
    assert n == want and fake.rate_limited == 0  # 2 x 12 pages of 200 candles
    # 10 requests at once, then 10 per window of 1 s + margin: 24 need just over 2 windows;
    # 0.9 x 10 req/s would allow 2.7 s after the first.
    assert (n - 1) // 10 * 1.0 <= ended - started and ended - answered[0] < n / 9


# --------------------------------------------------------------------------- the CLI


def test_cli_help_lists_the_data_commands(tmp_path: Path) -> None:
    result = upquant(tmp_path, "data", "--help")
    for command in ("import", "fetch", "stream", "export", "resample", "status"):
        assert command in result.stdout


@pytest.mark.slow
def test_cli_fetch_killed_mid_run_resumes_without_duplicates_or_holes(tmp_path: Path) -> None:
    candles = pd.concat(
        generate_candles(m, "1", "2025-09-01", 2 * 1440, seed=i, gap_prob=0.15)
        for i, m in enumerate(["KRW-BTC", "KRW-ETH"])
    )
    args = [
        "data",
        "fetch",
        "KRW-BTC",
        "KRW-ETH",
        "--unit",
        "1",
        "--since",
        "2025-09-01",
        "--until",
        "2025-09-03",
    ]
    with FakeUpbit(candles).run_in_thread() as fake:
        env = {**os.environ, "UPQUANT_HOME": str(tmp_path), **fake.env()}
        process = subprocess.Popen(
            [UPQUANT, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while fake.requests["/v1/candles/minutes/1"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.returncode == -signal.SIGKILL
        killed_at = fake.requests["/v1/candles/minutes/1"]
        assert 10 <= killed_at < 30  # 2 x 15 pages in all
        con = connect(tmp_path / "upquant.duckdb")
        partial = sum(len(load_candles(con, m, "1")) for m in ("KRW-BTC", "KRW-ETH"))
        con.close()
        assert 0 < partial < len(candles)

        fake.reset_counters()
        again = upquant(tmp_path, *args, "--json", env=fake.env())
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        resumed = fake.requests["/v1/candles/minutes/1"]
        assert resumed == report["requests"] <= 30 - killed_at + 8  # only what was missing
        assert fake.rate_limited == 0
    con = connect(tmp_path / "upquant.duckdb")
    for market in ("KRW-BTC", "KRW-ETH"):
        same_candles(stored(con, market, "1"), fake.candles(market))
    con.close()


def test_cli_fetch_all_krw_and_418_message(tmp_path: Path) -> None:
    candles = pd.concat(
        generate_candles(m, "60", "2025-09-01", 48, seed=i)
        for i, m in enumerate(["KRW-BTC", "KRW-ETH", "BTC-ETH"])
    )
    with FakeUpbit(candles, markets={}).run_in_thread() as fake:
        result = upquant(
            tmp_path,
            "data",
            "fetch",
            "--all-krw",
            "--unit",
            "60",
            "--since",
            "2025-09-01",
            "--until",
            "2025-09-03",
            env=fake.env(),
        )
        assert result.returncode == 0, result.stderr
        assert "2 markets unit 60: 96 candles fetched, 96 new candles stored" in result.stdout
        fake.block(300)
        blocked = upquant(
            tmp_path,
            "data",
            "fetch",
            "KRW-BTC",
            "--unit",
            "60",
            "--since",
            "2025-08-01",
            env=fake.env(),
        )
    assert blocked.returncode == 1
    assert blocked.stderr.startswith("error:")
    # The fake says how long the block still lasts when the request arrives.
    message = blocked.stderr.replace("\n", " ")
    assert re.search(r"blocked this IP for (?:29\d|300) s \(5 min\), until 20\d\d-", message)
    assert "Traceback" not in blocked.stderr


def test_cli_import_strict_export_resample_and_status(
    tmp_path: Path, bad_file: Path, btc: pd.DataFrame
) -> None:
    strict = upquant(
        tmp_path, "data", "import", str(bad_file), "-m", "KRW-BTC", "-u", "1", "--strict"
    )
    assert strict.returncode == 1
    errors = strict.stderr.replace("\n", " ")
    assert "9 of 20 rows fail validation" in errors and "row 2 (high < low)" in errors
    loose = upquant(tmp_path, "data", "import", str(bad_file), "-m", "KRW-BTC", "-u", "1", "--json")
    assert json.loads(loose.stdout)["rows_new"] == 11
    shared = tmp_path / "btc.csv"
    btc.rename(columns={"ts": "timestamp"})[["timestamp", *VALUES]].to_csv(shared, index=False)
    # The loose import stored 00:07 with line 8's numbers (line 9, the real 00:07, was a
    # duplicate): the full file disagrees there, so it needs --overwrite.
    refused = upquant(tmp_path, "data", "import", str(shared), "-m", "KRW-BTC", "-u", "1")
    assert refused.returncode == 1 and "1 stored KRW-BTC 1 candles would change" in refused.stderr
    replaced = upquant(
        tmp_path, "data", "import", str(shared), "-m", "KRW-BTC", "-u", "1", "--overwrite"
    )
    assert ", 1 updated, 10 unchanged" in replaced.stdout, replaced.stderr
    resampled = upquant(
        tmp_path, "data", "resample", "KRW-BTC", "--from-unit", "1", "--to-unit", "60"
    )
    assert "→ 48 unit 60 candles (48 new)" in resampled.stdout, resampled.stderr
    out = tmp_path / "h.parquet"
    exported = upquant(tmp_path, "data", "export", "KRW-BTC", "--unit", "60", "--out", str(out))
    assert "48 candles written" in exported.stdout and len(pd.read_parquet(out)) == 48
    status = json.loads(upquant(tmp_path, "data", "status", "--json").stdout)
    assert [(s["market"], s["unit"], s["rows"]) for s in status] == [
        ("KRW-BTC", "1", len(btc)),
        ("KRW-BTC", "60", 48),
    ]
    assert {"missing", "gaps", "longest_gap", "longest_gap_start", "last_update"} <= set(status[0])
    missing = upquant(tmp_path, "data", "import", str(shared), "-m", "KRW-BTC")
    assert missing.returncode == 1 and "pass --unit" in missing.stderr


def test_fetch_progress_bar_shows_markets_candles_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    import tui.cli.data as data_commands
    from engine.data.backfill import FetchReport, SeriesFetch
    from engine.service.data import FetchProgress

    screen = io.StringIO()
    monkeypatch.setattr(data_commands, "err", Console(file=screen, force_terminal=True, width=150))
    progress, update = data_commands._fetch_progress()
    series = [
        SeriesFetch("KRW-BTC", "1", utc("2025-09-01"), utc("2025-09-02"), 8, 8, 1440, 1440),
        SeriesFetch("KRW-ETH", "1", utc("2025-09-01"), utc("2025-09-02"), 8, 3, 600, 600),
    ]
    report = FetchReport("1", series, requests=11, seconds=1.1)
    counts = FetchProgress(  # what the data_fetch operation reports from such a report
        markets_done=report.markets_done,
        markets=len(series),
        chunks_done=report.chunks_done,
        chunks_total=report.chunks_total,
        candles=report.candles,
        request_rate=report.request_rate,
    )
    with progress:
        update(counts)
        progress.refresh()
    text = screen.getvalue()
    assert "markets 1/2" in text and "11/16 requests" in text
    assert "2,040 candles" in text and "10.0 req/s" in text


@pytest.mark.slow
def test_cli_stream_records_live_candles(tmp_path: Path) -> None:
    bucket = next_minute()  # the coming minute: no frame late while the CLI starts
    rows = generate_candles("KRW-BTC", "1", bucket, 3).to_dict("records")
    with FakeUpbit().run_in_thread() as fake:
        env = {**os.environ, "UPQUANT_HOME": str(tmp_path), **fake.env()}
        process = subprocess.Popen(
            [UPQUANT, "data", "stream", "KRW-BTC", "--watch", "KRW-ETH", "--for", "2.5", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        fake.run_sync(fake.wait_subscribed(timeout=20), timeout=30)
        for row in rows:
            fake.run_sync(fake.push_candle("KRW-BTC", row))
        fake.run_sync(fake.push_trade("KRW-ETH", 3_000_000.0, 1.0))
        out, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    summary = json.loads(out)
    assert summary["frames"] == 4 and summary["candles_closed"] == 2
    assert "Upbit live: streaming 1 markets 1m, trade/ticker of 1 watched" in errors
    con = connect(tmp_path / "upquant.duckdb")
    assert len(load_candles(con, "KRW-BTC", "1")) == 3
    con.close()
