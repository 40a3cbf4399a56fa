"""The `upquant` console script, run as a user runs it: exit codes, one-line errors, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DATA

UPQUANT = str(Path(sys.executable).with_name("upquant"))


def upquant(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UPQUANT, *args], check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "UPQUANT_HOME": str(home), **(env or {})},
    )


@pytest.fixture
def csv_2000(tmp_path: Path) -> Path:
    path = tmp_path / "btc.csv"
    pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=2000).to_csv(path, index=False)
    return path


def test_every_command_has_help(tmp_path: Path) -> None:
    for args in ([], ["data"], ["data", "import"], ["data", "fetch"], ["data", "status"], ["train"],
                 ["models", "list"], ["tui"], ["run"]):
        result = upquant(tmp_path, *args, "--help")
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage" in result.stdout


def test_import_status_and_idempotent_reimport(tmp_path: Path, csv_2000: Path) -> None:
    first = upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    assert first.returncode == 0, first.stderr
    assert "2,000 new candles stored" in first.stdout
    again = upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    assert "0 new candles stored" in again.stdout
    status = json.loads(upquant(tmp_path, "data", "status", "--json").stdout)
    assert [{k: s[k] for k in ("market", "unit", "rows", "first", "gaps")} for s in status] == [
        {"market": "KRW-BTC", "unit": "1", "rows": 2000, "first": "2025-09-01T00:00:00.000Z", "gaps": 0}
    ]


def test_bad_rows_are_reported_and_good_rows_imported(tmp_path: Path, csv_2000: Path) -> None:
    upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    frame = pd.read_csv(csv_2000)
    bad = frame.head(10).copy()
    bad.loc[0, "high"] = bad.loc[0, "low"] - 1  # high < low
    bad.loc[1, "close"] = float("nan")
    bad.loc[2, "volume"] = -1.0
    bad["timestamp"] = pd.date_range("2030-01-01", periods=10, freq="min").strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    result = upquant(tmp_path, "data", "import", str(path), "--market", "KRW-BTC", "--unit", "1")
    assert result.returncode == 0, result.stderr
    assert "7 new candles stored, 3 rejected" in result.stdout
    assert "high < low" in result.stdout and "row 2 (high < low)" in result.stdout
    status = json.loads(upquant(tmp_path, "data", "status", "--json").stdout)
    assert status[0]["rows"] == 2007  # nothing stored was lost


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "import", "missing.csv", "--market", "KRW-BTC"], "no such file"),
        (["data", "import", "x.csv", "--market", "BTC"], "not an Upbit market code"),
        (["data", "import", "x.csv", "--market", "KRW-BTC", "--unit", "7"], "unit '7' is not supported"),
        (["data", "fetch", "KRW-BTC", "--since", "yesterday"], "is not a date/time"),
        (["train", "xgboost", "KRW-ETH"], "no KRW-ETH unit 1 candles"),
        (["train", "xgboost", "KRW-BTC", "--unit", "60"], "no KRW-BTC unit 60 candles"),
    ],
)
def test_bad_arguments_give_one_red_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    result = upquant(tmp_path, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_train_prints_metrics_beside_the_baseline_and_lists_the_model(tmp_path: Path, csv_2000: Path) -> None:
    upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    result = upquant(tmp_path, "train", "xgboost", "KRW-BTC", "--unit", "1", "--n-estimators", "30", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "xgboost-KRW-BTC-1@1" and report["status"] == "champion"
    assert set(report["metrics"]) == {
        "validation", "test", "baseline_majority_test", "trading_model", "trading_buy_and_hold",
        "trading_sma_cross", "trading_majority_class", "trading_no_trade",
    }
    listed = json.loads(upquant(tmp_path, "models", "list", "--json").stdout)
    assert [m["ref"] for m in listed] == ["xgboost-KRW-BTC-1@1"]
    unknown = upquant(tmp_path, "train", "svm", "KRW-BTC", "--unit", "1")
    assert unknown.returncode == 1 and "unknown model kind 'svm'" in unknown.stderr


def test_headless_run_replays_offline_and_stores_signals(tmp_path: Path, csv_2000: Path) -> None:
    upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    result = upquant(tmp_path, "run", "--market", "KRW-BTC", "--offline")
    assert result.returncode == 0, result.stderr
    assert "REPLAY" in result.stderr and "no champion" in result.stderr
    assert "signals:" in result.stdout
