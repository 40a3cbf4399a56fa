"""`upquant run` over a watchlist: every market decided, the watchlist table printed, a bad
strategy spec file refused naming the file and the key; `upquant backtest --parity` running a
spec both ways (replay through the live engine, vectorised) and finding them equal."""

from __future__ import annotations

import json
from pathlib import Path

from store.candles import upsert_candles
from store.db import connect
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant_many


def test_run_replays_a_watchlist_with_a_strategy_spec(tmp_path: Path) -> None:
    with connect(tmp_path / "upquant.duckdb") as con:
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 600))
        upsert_candles(con, shared_candles("KRW-ETH_1m.csv", 600, market="KRW-ETH"))
    spec = tmp_path / "fast.toml"
    spec.write_text('name = "fast"\nform = "rule"\n\n[[rules]]\nrule = "sma-cross"\nfast = 3\n'
                    'slow = 8\n')
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"form": "vote"}))
    ok, refused, unknown, parity, parity_json = upquant_many(tmp_path, [
        ["run", "--markets", "KRW-BTC,KRW-ETH", "--offline", "--replay-candles", "100",
         "--strategy-spec", str(spec)],
        ["run", "--markets", "KRW-BTC", "--offline", "--strategy-spec", str(bad)],
        ["run", "--markets", "KRW-BTC,BTC", "--offline"],
        ["backtest", "KRW-ETH", "--parity", "--strategy-spec", str(spec), "--slippage", "3"],
        ["backtest", "KRW-ETH", "--parity", "--strategy-spec", str(spec), "--json"],
    ], env={"UPQUANT_SERVER": "off"})
    assert ok.returncode == 0, ok.stderr
    assert "REPLAY" in ok.stderr and "2 markets" in ok.stderr
    assert "signals: 200 " in ok.stdout  # 100 candles of each market
    table = ok.stdout[ok.stdout.index("market"):]
    assert "KRW-BTC" in table and "KRW-ETH" in table and "sma-cross(3,8)" in table
    assert refused.returncode == 1 and str(bad) in refused.stderr and "form" in refused.stderr
    assert unknown.returncode != 0 and "BTC" in unknown.stderr
    assert parity.returncode == 0, parity.stderr
    assert "replay (live engine)" in parity.stdout and "EQUAL" in parity.stdout
    report = json.loads(parity_json.stdout)
    assert report["equal"] is True and report["candles"] == 600
    assert report["live"] == report["backtest"] and report["live"]["fills"] > 0
    with connect(tmp_path / "upquant.duckdb") as con:
        rows = con.execute("SELECT market, count(*) FROM signals GROUP BY market ORDER BY 1").fetchall()
        fills = con.execute("SELECT count(*) FROM paper_fills WHERE account = 'replay'").fetchall()
    assert rows == [("KRW-BTC", 100), ("KRW-ETH", 100)]
    assert fills[0][0] > 0


def test_a_watchlist_entry_may_name_its_unit() -> None:
    import pytest

    from tui.cli.live import _watchlist
    from tui.cli.render import CliError

    assert _watchlist("KRW-BTC", "KRW-BTC, KRW-ETH:60m,KRW-XRP:1") == [
        "KRW-BTC",
        "KRW-ETH:60",
        "KRW-XRP:1",
    ]
    with pytest.raises(CliError, match="two units"):
        _watchlist("KRW-BTC", "KRW-ETH:60,KRW-ETH:15")
    with pytest.raises(CliError, match="candle unit '2'"):
        _watchlist("KRW-BTC", "KRW-ETH:2")
