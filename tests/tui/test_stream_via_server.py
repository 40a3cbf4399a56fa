"""`upquant data stream` while a real `upquant serve` owns the store: the server records the
feed (with its own environment's Upbit, the fake one on 127.0.0.1) and the command, a
second process, follows it and prints what it prints in process: the same status lines, the
same `--json` summary, the same exit codes (0, 1 with `error:`/`hint:`, 130 on Ctrl-C). The
candles land in the server's store (read back through the server), the feed is gone when the
command ends, and a refused command stops nothing on the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import next_minute
from tests.e2e.servers import Server, Servers, wait_for
from tests.fake_upbit import FakeUpbit, generate_candles
from tests.tui.test_cli import UPQUANT, upquant

pytestmark = pytest.mark.slow

DEAD_WS = "ws://127.0.0.1:9/websocket/v1"  # nothing listens: a stream there never connects
SUMMARY = [
    "markets",
    "frames",
    "candles_closed",
    "candles_written",
    "connects",
    "drops",
    "backfilled",
    "malformed",
]
WAIT_S = 60.0


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def fake() -> Iterator[FakeUpbit]:
    with FakeUpbit().run_in_thread() as upbit:
        yield upbit


def serve_with(
    servers: Servers, home: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Server:
    """`upquant serve` on `home` with `env` in its environment (its Upbit URLs)."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return servers(home)


def stream(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [UPQUANT, "data", "stream", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UPQUANT_HOME": str(home), **(env or {})},
        # a child of a non-interactive shell may inherit SIGINT ignored: start from default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def feeds(server: Server) -> list[dict[str, Any]]:
    return list(server.ok("feed_status")["feeds"])


def test_a_stream_through_the_server_stores_the_candles_and_prints_what_in_process_prints(
    tmp_path: Path, servers: Servers, fake: FakeUpbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve_with(servers, tmp_path / "served", fake.env(), monkeypatch)
    bucket = next_minute()  # the coming minute: no frame late while the commands start
    rows = generate_candles("KRW-BTC", "1", bucket, 3).to_dict("records")
    args = ("KRW-BTC", "--for", "15", "--json")
    # this terminal's own Upbit URL leads nowhere: the server streams with its environment
    via_server = stream(server.home, *args, env={"UPQUANT_UPBIT_WS_URL": DEAD_WS})
    in_process = stream(tmp_path / "alone", *args, env=fake.env())
    fake.run_sync(fake.wait_subscribed(2, timeout=WAIT_S), timeout=WAIT_S + 5)
    running = feeds(server)
    assert [(f["markets"], f["running"]) for f in running] == [(["KRW-BTC"], True)]
    for row in rows:
        fake.run_sync(fake.push_candle("KRW-BTC", row))
    out, err = via_server.communicate(timeout=120)
    alone_out, alone_err = in_process.communicate(timeout=120)
    assert via_server.returncode == 0, err
    assert in_process.returncode == 0, alone_err

    summary = json.loads(out)
    assert list(summary) == SUMMARY and summary == json.loads(alone_out)
    assert summary["frames"] == 3 and summary["candles_closed"] == 2
    assert summary["connects"] == 1 and summary["candles_written"] == 3
    assert err.splitlines() == alone_err.splitlines() == ["Upbit live: streaming 1 markets 1m"]

    # the candles are in the server's store, read back through the server; the feed is gone
    stored = server.ok("candles", {"market": "KRW-BTC", "unit": "1"})
    candles = stored["candles"] if isinstance(stored, dict) else stored
    assert [pd.Timestamp(c["ts"]) for c in candles] == [r["ts"] for r in rows]
    assert [c["close"] for c in candles] == [r["close"] for r in rows]
    assert feeds(server) == []
    assert server.process.poll() is None  # the server keeps running

    # the same command without --json prints the same counts as a line
    plain = upquant(server.home, "data", "stream", "KRW-BTC", "--for", "1")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("markets 1, frames ")
    assert feeds(server) == []


def test_ctrl_c_stops_the_servers_feed_prints_the_summary_and_exits_130(
    tmp_path: Path, servers: Servers, fake: FakeUpbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve_with(servers, tmp_path / "served", fake.env(), monkeypatch)
    process = stream(server.home, "KRW-BTC", "KRW-ETH", "--json")
    fake.run_sync(fake.wait_subscribed(1, timeout=WAIT_S), timeout=WAIT_S + 5)
    wait_for("the command's feed", lambda: feeds(server), WAIT_S)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    summary = json.loads(out)
    assert list(summary) == [*SUMMARY, "interrupted"] and summary["interrupted"] is True
    assert summary["markets"] == 2 and summary["connects"] == 1
    assert err.splitlines()[-1] == "interrupted (Ctrl-C)"
    assert feeds(server) == [] and server.process.poll() is None


def test_refused_streams_fail_clearly_and_stop_nothing_on_the_server(
    tmp_path: Path, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve_with(
        servers, tmp_path / "served", {"UPQUANT_UPBIT_WS_URL": DEAD_WS}, monkeypatch
    )
    other = server.ok("feed_start", {"markets": ["KRW-ETH"]})  # someone else's feed
    assert other["running"] is True

    bad = upquant(server.home, "data", "stream", "btc", "--for", "2")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "error: market 'btc' is not an Upbit market code; write it as QUOTE-BASE, e.g. KRW-BTC"
    )

    # refused by the server (the same words as in process), strict JSON with --json
    daily = upquant(server.home, "data", "stream", "KRW-BTC", "--unit", "D", "--json")
    assert daily.returncode == 1
    assert "minute candles only" in json.loads(daily.stdout)["error"]

    # the server's socket never connects: said with the server's URL, not this terminal's
    never = upquant(
        server.home,
        "data",
        "stream",
        "KRW-BTC",
        "--for",
        "2",
        "--json",
        env={"UPQUANT_UPBIT_WS_URL": "ws://127.0.0.1:7/websocket/v1"},
    )
    assert never.returncode == 1
    report = json.loads(never.stdout)
    assert "never connected to Upbit at ws://127.0.0.1:9/websocket/v1" in report["error"]
    assert "the server" in report["hint"]

    (left,) = feeds(server)  # the other feed runs on, nothing of the commands is left
    assert left["id"] == other["id"] and left["running"] is True
    assert server.process.poll() is None
    assert server.stop() == 0  # and the server stops cleanly with a feed running
