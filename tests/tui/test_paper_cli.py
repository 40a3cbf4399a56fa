"""The paper book's faces: the `paper` operation, `GET /api/v1/paper` and `upquant paper`,
on a book the broker traded on real candles and saved to the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import Workstation
from engine.service.core import NotFound
from engine.service.paper import PaperRequest
from engine.trading.paper import BrokerConfig, PaperBroker
from engine.trading.paper_book import save_book
from engine.trading.strategies import sma_cross_actions
from store.db import connect
from store.tokens import create_token
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant_many

ACTIONS = np.array(["sell", "hold", "buy"])


@pytest.fixture
def traded(home: Path) -> PaperBroker:
    """The live account after 300 hourly KRW-ETH candles of an SMA cross, capped at 400,000
    KRW a buy; the last candle's close left a position open."""
    candles = shared_candles("KRW-ETH_60m.csv", 300, market="KRW-ETH", unit="60")
    codes = sma_cross_actions(candles["close"].to_numpy(), 5, 20)
    last = int(np.flatnonzero(codes == 1)[-1])  # stop while long, after the last buy filled
    broker = PaperBroker(BrokerConfig(slippage_bps=5.0))
    con = connect()
    rows = zip(candles["ts"], candles["open"], candles["close"], ACTIONS[codes + 1], strict=True)
    for ts, o, c, action in list(rows)[: last + 2]:
        broker.on_candle("KRW-ETH", ts, float(o), float(c))
        broker.order("KRW-ETH", ts, str(action), 400_000.0)
    save_book(con, "live", broker)
    con.close()
    assert broker.positions and len(broker.recent_fills) > 6
    return broker


def test_the_operation_shows_the_saved_book(traded: PaperBroker) -> None:
    with Workstation() as ws:
        book = ws.paper(PaperRequest(fills=5))
        empty = ws.paper(PaperRequest(account="replay"))
        with pytest.raises(NotFound, match="no paper account 'demo'"):
            ws.paper(PaperRequest(account="demo"))
    assert book.stored and book.cash == traded.cash and book.equity == traded.equity
    assert book.realised_pnl == traded.realised_pnl
    assert book.equity == pytest.approx(book.initial_cash + book.realised_pnl + book.unrealised_pnl)
    (position,) = book.positions
    assert (
        position.market == "KRW-ETH"
        and position.last_price == traded.positions["KRW-ETH"].last_price
    )
    assert position.cost == pytest.approx(400_000.0)
    assert [f.id for f in book.fills] == [f.id for f in list(traded.recent_fills)[-5:]]
    assert book.config["slippage_bps"] == 5.0
    assert not empty.stored and empty.equity == empty.cash == 1_000_000.0


async def test_the_route_answers_the_book(traded: PaperBroker) -> None:
    con = connect()
    token = create_token(con, "read-test", "read")[1]
    client = TestClient(TestServer(create_app(Workstation(con)), host="127.0.0.1"))
    await client.start_server()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with client.get("/api/v1/paper?account=live&fills=3", headers=headers) as answer:
            assert answer.status == 200
            body = await answer.json()
        async with client.get("/api/v1/paper?account=nope", headers=headers) as missing:
            assert missing.status == 404
            assert "no paper account" in (await missing.json())["error"]
    finally:
        await client.close()
        con.close()
    assert body["cash"] == traded.cash and len(body["fills"]) == 3
    assert body["positions"][0]["market"] == "KRW-ETH"


@pytest.mark.slow  # a fresh interpreter importing the CLI: about 3 s alone, more under load
def test_the_command_renders_the_book(traded: PaperBroker, home: Path) -> None:
    table, as_json, bad = upquant_many(
        home, [["paper"], ["paper", "--json"], ["paper", "--account", "nope"]]
    )
    assert table.returncode == 0, table.stderr
    assert "paper account live" in table.stdout and "KRW-ETH" in table.stdout
    assert f"{traded.cash:,.0f}" in table.stdout
    data = json.loads(as_json.stdout)
    assert data["equity"] == traded.equity and data["positions"][0]["units"] > 0
    assert bad.returncode == 1 and "no paper account 'nope'" in bad.stderr + bad.stdout
