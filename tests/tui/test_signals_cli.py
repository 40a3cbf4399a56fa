"""`upquant signals` on a real store whose signals real replays wrote (real KRW-BTC and
KRW-ETH candles, the rule deciding by two strategy specs): newest first, every filter (market, unit, mode, action,
strategy prefix, last), KST by default and UTC on request, --json the operation's answer, bad
values refused with a hint; the REST route takes the same filters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.live.engine import LiveEngine
from engine.live.sources import replay
from engine.server.app import create_app
from engine.service import Workstation
from engine.trading.spec import StrategySpec
from store.db import connect
from store.tokens import create_token
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant_many

PRIMED = 40  # the rule reads 31 candles
# the ETH replay's strategy spec (the BTC one decides by the engine's default spec)
COOLDOWN = StrategySpec(name="sma with a cooldown", cooldown=3)


def _replay(con, name: str, market: str, rows: int, mode: str, **options) -> str:  # type: ignore[no-untyped-def]
    """Replay real candles through the live engine (no model: the spec's rule decides);
    the hash of the spec that decided."""
    candles = shared_candles(name, rows, market=market)
    engine = LiveEngine(con, market, "1", no_model_reason="no champion", mode=mode, **options)
    engine.prime(candles.iloc[:PRIMED])
    asyncio.run(replay(engine, candles.iloc[PRIMED:]))
    assert engine.strategy is not None
    return engine.strategy.hash


@pytest.fixture
def stored(home: Path) -> tuple[pd.DataFrame, str, str]:
    """The store's signals after two replays (BTC 'replay' by the default spec, ETH 'demo'
    by COOLDOWN), oldest first; the two specs' hashes."""
    con = connect()
    try:
        btc = _replay(con, "KRW-BTC_1m.csv", "KRW-BTC", 240, "replay")
        eth = _replay(con, "KRW-ETH_1m.csv", "KRW-ETH", 140, "demo", strategy=COOLDOWN)
        frame = con.execute("SELECT * FROM signals ORDER BY ts, market").df()
    finally:
        con.close()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    assert btc != eth
    return frame, btc, eth


def _json(out: str) -> list[dict]:
    return json.loads(out)


def test_signals_filters_times_json_and_errors(
    home: Path, stored: tuple[pd.DataFrame, str, str]
) -> None:
    stored, btc_spec, eth_spec = stored
    assert len(stored) == 200 + 100 and {"buy", "sell", "hold"} <= set(stored["action"])
    btc = stored[stored["market"] == "KRW-BTC"]
    commands = [
        ["signals", "--json", "--last", "1000"],
        ["signals", "--market", "KRW-BTC", "--last", "5", "--json"],
        ["signals", "--mode", "demo", "--last", "1000", "--json"],
        ["signals", "--mode", "live", "--json"],
        ["signals", "--action", "buy", "--market", "KRW-BTC", "--json", "--last", "1000"],
        ["signals", "--strategy", eth_spec[:8].upper(), "--json", "--last", "1000"],
        ["signals", "--strategy", eth_spec, "--unit", "60", "--json"],
        ["signals", "--market", "KRW-BTC", "--last", "3"],
        ["signals", "--market", "KRW-BTC", "--last", "3", "--utc"],
        ["signals", "--mode", "live"],
        ["signals", "--market", "krw-btc"],
        ["signals", "--mode", "paper"],
        ["signals", "--strategy", "zz12", "--json"],
        ["signals", "--last", "0"],
        ["signals", "--unit", "7"],
    ]
    (
        every,
        newest,
        demo,
        live,
        buys,
        by_prefix,
        other_unit,
        table,
        table_utc,
        empty,
        *bad,
    ) = upquant_many(home, commands, env={"UPQUANT_SERVER": "off"})
    for done in (every, newest, demo, live, buys, by_prefix, other_unit, table, table_utc, empty):
        assert done.returncode == 0, (done.args, done.stderr)

    # newest first, ties in market order; every column the table has, the strategy too
    listed = _json(every.stdout)
    expected = stored.sort_values(["ts", "market"], ascending=[False, True])
    assert [(pd.Timestamp(s["ts"]), s["market"]) for s in listed] == list(
        zip(expected["ts"], expected["market"], strict=True)
    )
    assert {s["strategy"] for s in listed if s["market"] == "KRW-ETH"} == {eth_spec}
    assert {s["strategy"] for s in listed if s["market"] == "KRW-BTC"} == {btc_spec}
    assert [s["reason"] for s in listed] == list(expected["reason"])

    assert [pd.Timestamp(s["ts"]) for s in _json(newest.stdout)] == list(btc["ts"][::-1][:5])
    assert {(s["market"], s["mode"]) for s in _json(demo.stdout)} == {("KRW-ETH", "demo")}
    assert len(_json(demo.stdout)) == 100 and _json(live.stdout) == []
    bought = _json(buys.stdout)
    assert len(bought) == int((btc["action"] == "buy").sum()) > 0
    assert {(s["market"], s["action"]) for s in bought} == {("KRW-BTC", "buy")}
    assert {s["market"] for s in _json(by_prefix.stdout)} == {"KRW-ETH"}
    assert len(_json(by_prefix.stdout)) == 100 and _json(other_unit.stdout) == []

    # the table: KST by default (UTC+9), UTC on request; action, confidence, source, mode
    rows = btc.iloc[::-1].head(3)
    for _, row in rows.iterrows():
        kst = (row["ts"] + pd.Timedelta(hours=9)).strftime("%Y-%m-%d %H:%M")
        utc = row["ts"].strftime("%Y-%m-%d %H:%M")
        assert kst in table.stdout and utc not in table.stdout
        assert utc in table_utc.stdout
    assert "time (KST)" in table.stdout and "time (UTC)" in table_utc.stdout
    line = next(t for t in table.stdout.splitlines() if "KRW-BTC" in t)
    assert all(word in line for word in ("replay", "sma-cross(10,30)", rows.iloc[0]["action"]))
    assert "no stored signals match these filters" in empty.stdout

    market, mode, strategy, last, unit = bad
    for done, words in (
        (market, ("'krw-btc' is not an Upbit market code",)),
        (mode, ("--mode", "paper")),
        (strategy, ("'zz12' is not a strategy spec's hash",)),
        (last, ("--last 0",)),
        (unit, ("unit '7'",)),
    ):
        assert done.returncode != 0, done.args
        text = done.stderr + done.stdout
        assert all(w in text for w in words), (done.args, text)
        assert "Traceback" not in text
    assert "hint" in json.loads(strategy.stdout)


async def test_the_route_takes_mode_and_strategy(
    home: Path, stored: tuple[pd.DataFrame, str, str]
) -> None:
    _, btc_spec, eth_spec = stored
    con = connect()
    token = create_token(con, "read-test", "read")[1]
    client = TestClient(TestServer(create_app(Workstation(con)), host="127.0.0.1"))
    await client.start_server()
    headers = {"Authorization": f"Bearer {token}"}
    try:

        async def get(query: str) -> tuple[int, list[dict]]:
            async with client.get(f"/api/v1/signals?{query}", headers=headers) as response:
                return response.status, await response.json()

        status, demo = await get(f"mode=demo&strategy={eth_spec[:6]}&last=1000")
        assert status == 200 and len(demo) == 100
        assert {(s["market"], s["strategy"]) for s in demo} == {("KRW-ETH", eth_spec)}
        status, replayed = await get(f"strategy={btc_spec}&last=1000")
        assert status == 200 and {s["market"] for s in replayed} == {"KRW-BTC"}
        status, none = await get(f"mode=replay&strategy={eth_spec}")
        assert status == 200 and none == []
        for query, field in (
            ("mode=paper", "mode"),
            ("strategy=G123", "strategy"),
            ("market=btc", "market"),
        ):
            status, refused = await get(query)
            assert status == 422 and field in refused["error"], (query, refused)
    finally:
        await client.close()
        con.close()
