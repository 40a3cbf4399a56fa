"""Imports lose nothing and let nothing odd in (issue 8): an import never silently replaces
stored candles (refused unless --overwrite, with inserted/updated/unchanged counts), never
blanks a stored `value`, and only finite, plausible numbers with sane timestamps enter the
store, whatever path writes them; every `--json` output of `upquant data` is strict JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.data.candles import ImportConflict, import_candles
from store.candles import CANDLE_COLUMNS, load_candles, resample, upsert_candles
from store.db import connect
from tests.conftest import DATA
from tests.tui.test_cli import upquant

OHLCV = ["open", "high", "low", "close", "volume"]


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN and ±Infinity (Python's own parser accepts them)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def shared_file(tmp_path: Path, name: str, rows: int, *, value: bool = False) -> Path:
    """The first `rows` candles of a shared CSV (optionally with value = close x volume)."""
    source = DATA / name
    if not source.exists():
        pytest.skip(f"shared data {source} is not present")
    frame = pd.read_csv(source, nrows=rows)
    if value:
        frame["value"] = frame["close"] * frame["volume"]
    path = tmp_path / f"{name.removesuffix('.csv')}_{rows}{'_value' if value else ''}.csv"
    frame.to_csv(path, index=False)
    return path


def snapshot(con: Any, market: str, unit: str = "1") -> pd.DataFrame:
    return load_candles(con, market, unit)[CANDLE_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------- item 5: no silent replacement


def test_importing_another_markets_file_over_stored_candles_is_refused(con, tmp_path: Path) -> None:
    eth = shared_file(tmp_path, "KRW-ETH_1m.csv", 3000)
    btc = shared_file(tmp_path, "KRW-BTC_1m.csv", 3002)  # two rows beyond the stored range
    first = import_candles(con, eth, "KRW-ETH", "1")
    assert (first.rows_new, first.rows_updated, first.rows_unchanged) == (3000, 0, 0)
    before = snapshot(con, "KRW-ETH")

    with pytest.raises(ImportConflict) as caught:
        import_candles(con, btc, "KRW-ETH", "1")
    message = str(caught.value)
    assert "3,000 stored KRW-ETH 1 candles would change" in message
    assert "2025-09-01 00:00" in message  # first changed candle
    assert "2025-09-03 01:59" in message  # last changed candle (row 3000 of the file)
    assert "close 6,118,000 → " in message  # an example: the stored value and the file's
    assert "nothing was written" in message and "--overwrite" in caught.value.hint
    report = caught.value.report
    assert report.written is False and report.rows_updated == 3000 and report.rows_new == 2
    pd.testing.assert_frame_equal(snapshot(con, "KRW-ETH"), before)  # not one candle changed

    replaced = import_candles(con, btc, "KRW-ETH", "1", overwrite=True)
    assert (replaced.rows_new, replaced.rows_updated, replaced.rows_unchanged) == (2, 3000, 0)
    after = snapshot(con, "KRW-ETH")
    want = pd.read_csv(btc)
    np.testing.assert_array_equal(after[OHLCV].to_numpy(), want[OHLCV].to_numpy())


def test_reimport_counts_unchanged_and_a_file_without_value_keeps_stored_values(
    con, tmp_path: Path
) -> None:
    with_value = shared_file(tmp_path, "KRW-BTC_1m.csv", 500, value=True)
    without = shared_file(tmp_path, "KRW-BTC_1m.csv", 600)  # no value column, 100 rows more
    import_candles(con, with_value, "KRW-BTC", "1")
    stored_values = snapshot(con, "KRW-BTC")["value"].to_numpy()
    assert not np.isnan(stored_values).any()

    again = import_candles(con, without, "KRW-BTC", "1")  # no --overwrite needed: nothing changes
    assert (again.rows_new, again.rows_updated, again.rows_unchanged) == (100, 0, 500)
    after = snapshot(con, "KRW-BTC")
    np.testing.assert_array_equal(after["value"].to_numpy()[:500], stored_values)
    assert after["value"].iloc[500:].isna().all()

    # The store itself never blanks a value, whatever writes (fetch pages, live frames).
    frame = after.head(10).assign(value=np.nan)
    upsert_candles(con, frame)
    np.testing.assert_array_equal(
        snapshot(con, "KRW-BTC")["value"].to_numpy()[:10], stored_values[:10]
    )


def test_resample_without_value_does_not_blank_stored_larger_candles(con, tmp_path: Path) -> None:
    import_candles(con, shared_file(tmp_path, "KRW-BTC_1m.csv", 120), "KRW-BTC", "1")
    hours = pd.DataFrame(
        {
            "market": "KRW-BTC",
            "unit": "60",
            "ts": pd.date_range("2025-09-01", periods=2, freq="h", tz="UTC"),
        }
    )
    minutes = snapshot(con, "KRW-BTC")
    for col in OHLCV:
        hours[col] = [minutes[col].iloc[0], minutes[col].iloc[60]]
    hours["value"] = [1.0e9, 2.0e9]
    upsert_candles(con, hours)
    resample(con, "KRW-BTC", "1", "60")  # the minutes lack value: the sums are NULL
    assert snapshot(con, "KRW-BTC", "60")["value"].tolist() == [1.0e9, 2.0e9]


def test_cli_refuses_a_wrong_market_import_and_overwrite_reports_updates(tmp_path: Path) -> None:
    eth = shared_file(tmp_path, "KRW-ETH_1m.csv", 2000)
    btc = shared_file(tmp_path, "KRW-BTC_1m.csv", 2000)
    home = tmp_path / "home"
    first = upquant(home, "data", "import", str(eth), "-m", "KRW-ETH", "-u", "1")
    assert first.returncode == 0, first.stderr
    assert "2,000 new candles stored, 0 rejected, 0 updated, 0 unchanged" in first.stdout

    refused = upquant(home, "data", "import", str(btc), "-m", "KRW-ETH", "-u", "1")
    assert refused.returncode == 1
    errors = refused.stderr.replace("\n", " ")
    assert "2,000 stored KRW-ETH 1 candles would change" in errors
    assert "nothing was written" in errors and "hint:" in refused.stderr and "--overwrite" in errors
    assert "Traceback" not in refused.stderr

    refused_json = upquant(home, "data", "import", str(btc), "-m", "KRW-ETH", "-u", "1", "--json")
    assert refused_json.returncode == 1
    payload = strict_loads(refused_json.stdout)
    assert payload["written"] is False and payload["rows_updated"] == 2000
    assert "would change" in payload["error"] and "--overwrite" in payload["hint"]
    assert (
        payload["changes"][0]["series"] == "KRW-ETH 1" and payload["changes"][0]["candles"] == 2000
    )

    con = connect(home / "upquant.duckdb", read_only=True)
    assert snapshot(con, "KRW-ETH")["close"].iloc[0] == 6118000.0  # still ETH's
    con.close()

    again = upquant(
        home, "data", "import", str(btc), "-m", "KRW-ETH", "-u", "1", "--overwrite", "--json"
    )
    assert again.returncode == 0, again.stderr
    payload = strict_loads(again.stdout)
    assert (payload["rows_new"], payload["rows_updated"], payload["rows_unchanged"]) == (0, 2000, 0)
    same = upquant(home, "data", "import", str(btc), "-m", "KRW-ETH", "-u", "1")
    assert "0 new candles stored, 0 rejected, 0 updated, 2,000 unchanged" in same.stdout


# --------------------------------------------------------------------------- item 6: finite, plausible numbers


def poisoned_rows(tmp_path: Path, name: str) -> Path:
    """20 good candles with one bad number or time in each of CSV lines 3..11."""
    frame = pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=20)
    frame["value"] = frame["close"] * frame["volume"]
    frame["timestamp"] = frame["timestamp"].astype(object)
    frame.loc[1, "close"] = np.inf  # line 3
    frame.loc[2, "high"] = 1e308  # line 4
    frame.loc[3, "low"] = 1e-300  # line 5
    frame.loc[4, "volume"] = np.inf  # line 6
    frame.loc[5, "volume"] = 1e300  # line 7
    frame.loc[6, "value"] = -np.inf  # line 8
    frame.loc[7, "timestamp"] = "9999-12-31 00:00:00"  # line 9
    frame.loc[8, "timestamp"] = "0001-01-01 00:00:00"  # line 10
    future = pd.Timestamp.now(tz="UTC").floor("min") + pd.Timedelta(days=2)
    frame.loc[9, "timestamp"] = future.strftime("%Y-%m-%d %H:%M:%S")  # line 11
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_non_finite_implausible_and_out_of_range_rows_are_rejected_one_by_one(
    con, tmp_path: Path
) -> None:
    report = import_candles(con, poisoned_rows(tmp_path, "poison.csv"), "KRW-BTC", "1")
    assert report.rows_read == 20 and report.rows_rejected == 9 and report.rows_new == 11
    assert {r["row"] for r in report.rejected} == set(range(3, 12))  # each bad line, only those
    problems = " ".join(report.problems)
    for word in ("infinite", "price outside", "volume outside", "future", "before 2009"):
        assert word in problems, (word, report.problems)
    stored = snapshot(con, "KRW-BTC")
    assert len(stored) == 11 and np.isfinite(stored[OHLCV].to_numpy()).all()
    assert stored["high"].max() < 1e9 and stored["ts"].max() < pd.Timestamp("2026-01-01", tz="UTC")


def test_a_string_timestamp_column_out_of_range_rejects_rows_not_the_file(
    con, tmp_path: Path
) -> None:
    frame = pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=5)
    frame["timestamp"] = frame["timestamp"].str.replace(" ", "T") + "Z"
    frame.loc[1, "timestamp"] = "9999-01-01T00:00:00Z"
    frame.loc[2, "timestamp"] = "0001-01-01 00:00:00"  # a mixed column: read as text
    path = tmp_path / "zoned.csv"
    frame.to_csv(path, index=False)
    report = import_candles(con, path, "KRW-BTC", "1")
    assert (report.rows_new, report.rows_rejected) == (3, 2)
    assert [e.split(" (")[0] for e in report.examples] == ["row 3", "row 4"]


def test_the_store_refuses_non_finite_prices_from_any_path(con) -> None:
    frame = pd.DataFrame(
        {
            "market": "KRW-BTC",
            "unit": "1",
            "ts": pd.date_range("2025-09-01", periods=3, freq="min", tz="UTC"),
            "open": [1.0, 2.0, 3.0],
            "high": [1.0, np.inf, 3.0],
            "low": [1.0, 2.0, 3.0],
            "close": [1.0, 2.0, 3.0],
            "volume": [1.0, 1.0, 1.0],
            "value": np.nan,
        }
    )
    with pytest.raises(ValueError, match="non-finite"):
        upsert_candles(con, frame)
    with pytest.raises(ValueError, match="non-finite"):  # the many-series path too
        upsert_candles(con, pd.concat([frame, frame.assign(market="KRW-ETH", high=1.0)]))
    assert con.execute("SELECT count(*) FROM candles").fetchall()[0][0] == 0


# --------------------------------------------------------------------------- items 13, 14: CLI


def test_cli_strict_json_reports_rejected_rows_as_strict_json(tmp_path: Path) -> None:
    path = poisoned_rows(tmp_path, "poison.csv")
    home = tmp_path / "home"
    strict = upquant(
        home, "data", "import", str(path), "-m", "KRW-BTC", "-u", "1", "--strict", "--json"
    )
    assert strict.returncode == 1
    payload = strict_loads(strict.stdout)
    assert payload["written"] is False and payload["rows_rejected"] == 9
    assert "fail validation" in payload["error"] and payload["hint"]
    assert {r["row"] for r in payload["rejected"]} == set(range(3, 12))
    loose = upquant(home, "data", "import", str(path), "-m", "KRW-BTC", "-u", "1", "--json")
    assert loose.returncode == 0, loose.stderr
    assert strict_loads(loose.stdout)["rows_new"] == 11
    status = upquant(home, "data", "status", "--json")
    assert strict_loads(status.stdout)[0]["rows"] == 11


def test_cli_fetch_since_in_the_future_is_a_clear_error(tmp_path: Path) -> None:
    result = upquant(tmp_path, "data", "fetch", "KRW-BTC", "--since", "2099-01-01")
    assert result.returncode == 1
    first, hint = result.stderr.strip().split("\n")
    assert first.startswith("error:") and "--since 2099-01-01 is in the future" in first
    assert hint.startswith("hint:")
