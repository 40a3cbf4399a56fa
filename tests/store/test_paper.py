"""The paper book in the store: saved per pass, reloaded in a new connection, it continues
exactly as the broker that never stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.trading.paper import BrokerConfig, Fill, PaperBroker
from engine.trading.paper_book import load_book, reset_book, save_book
from engine.trading.strategies import sma_cross_actions
from store.db import connect, transaction
from store.paper import read_paper
from tests.conftest import shared_candles

ACTIONS = np.array(["sell", "hold", "buy"])
CONFIG = BrokerConfig(initial_cash=2_000_000.0, slippage_bps=5.0)


@pytest.fixture(scope="module")
def passes() -> list[list[tuple[str, pd.Timestamp, float, float, str]]]:
    """Two real markets' hourly candles, one pass per hour: (market, ts, open, close, action)."""
    out: dict[pd.Timestamp, list] = {}
    for name in ("KRW-BTC", "KRW-ETH"):
        candles = shared_candles(f"{name}_60m.csv", 600, market=name, unit="60")
        codes = sma_cross_actions(candles["close"].to_numpy(), 5, 20)
        rows = zip(candles["ts"], candles["open"], candles["close"], ACTIONS[codes + 1])
        for ts, o, c, a in rows:
            out.setdefault(ts, []).append((name, ts, float(o), float(c), str(a)))
    return [out[ts] for ts in sorted(out)]


def run(
    broker: PaperBroker, passes, con=None, account: str = "live", every: int = 10
) -> tuple[list[Fill], list[float]]:
    """The live engine's passes: each closed candle fills and marks, then orders; a save
    after every `every` passes (what changed over them, batched) and after the last."""
    fills, equity = [], []
    for i, rows in enumerate(passes):
        for market, ts, o, c, _ in rows:
            fills += broker.on_candle(market, ts, o, c)
        for market, ts, _, _, action in rows:
            broker.order(market, ts, action, 1_200_000.0)
        equity.append(broker.equity)
        if con is not None and (i % every == every - 1 or i == len(passes) - 1):
            save_book(con, account, broker)
    return fills, equity


def test_a_reloaded_book_continues_identically(home: Path, passes) -> None:
    whole_fills, whole_equity = run(PaperBroker(CONFIG), passes)
    assert len(whole_fills) > 20

    # stop right after a pass that left an order pending: the restart must fill it
    stop = next(
        i for i in range(len(passes) // 2, len(passes)) if any(r[4] != "hold" for r in passes[i])
    )
    con = connect()
    first = PaperBroker(CONFIG)
    fills, equity = run(first, passes[: stop + 1], con)
    assert first.pending
    con.close()

    con = connect()  # a new process's connection to the same file
    resumed = load_book(con, "live", CONFIG)
    assert resumed.cash == first.cash and resumed.realised_pnl == first.realised_pnl
    assert resumed.positions == first.positions
    assert {m: (o.id, o.side, o.ts) for m, o in resumed.pending.items()} == {
        m: (o.id, o.side, o.ts) for m, o in first.pending.items()
    }
    more, later = run(resumed, passes[stop + 1 :], con)
    assert fills + more == whole_fills  # same ids, prices, units, cash
    assert equity + later == whole_equity

    stored = read_paper(con, "live", recent=10_000)
    assert stored is not None and len(stored.fills) == len(whole_fills)
    assert stored.cash == resumed.cash
    assert set(stored.positions["market"]) == set(resumed.positions)
    assert list(stored.orders["status"].unique()) != ["pending"]
    con.close()


def test_saves_write_only_what_changed_and_reset_forgets(home: Path, passes) -> None:
    con = connect()
    broker = PaperBroker(CONFIG)
    run(broker, passes[:200], con)
    before = read_paper(con, "live")
    assert before is not None
    save_book(con, "live", broker)  # nothing happened since: nothing written
    assert read_paper(con, "live").updated_at == before.updated_at  # type: ignore[union-attr]
    tiny = PaperBroker(BrokerConfig(initial_cash=6_000.0))
    run(tiny, passes[:200], con, account="replay")
    rejected = con.execute(
        "SELECT count(*) FROM paper_orders WHERE account = 'replay' AND status = 'rejected'"
        " AND reason LIKE '%minimum%'"
    ).fetchone()
    assert rejected is not None and rejected[0] > 0  # recorded with the reason

    # today's settings apply on resume, but the account keeps the cash it started with
    today = load_book(con, "live", BrokerConfig(initial_cash=1.0, slippage_bps=9.0))
    assert today.config == BrokerConfig(initial_cash=2_000_000.0, slippage_bps=9.0)
    assert today.cash == broker.cash and today.positions == broker.positions

    reset_book(con, "replay")
    assert read_paper(con, "replay") is None
    assert load_book(con, "replay").cash == BrokerConfig().initial_cash
    assert read_paper(con, "live") is not None  # the other account is untouched


def test_a_save_in_the_callers_rolled_back_transaction_is_written_again(home: Path, passes) -> None:
    con = connect()
    broker = PaperBroker(CONFIG)
    run(broker, passes[:100])  # never saved
    with pytest.raises(RuntimeError), transaction(con):
        save_book(con, "live", broker, own_transaction=False)
        raise RuntimeError("the pass failed after the book was written")
    assert read_paper(con, "live") is None and broker.journal.fills  # nothing kept, nothing lost
    save_book(con, "live", broker)
    stored = read_paper(con, "live", recent=1000)
    assert stored is not None and len(stored.fills) == len(broker.recent_fills) > 0
    assert not broker.journal.fills
