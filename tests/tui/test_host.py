"""A TUI that hosts the server: while it runs, commands from another terminal (real `upquant`
processes on the same home) reach the store through it; on quit the server stops after the
session's flush, server.json goes and the store is free for a local command."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pandas as pd

from engine.server.lifecycle import read_server_info, running_server
from engine.server.runner import stop_workstation
from engine.service import Workstation
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from tests.tui.test_cli import upquant
from tests.tui.test_tui import SIZE, settle
from tui.app import UpquantApp
from tui.host import hosting
from tui.widgets import PredictionPanel, SignalLog

MARKET, UNIT = "KRW-BTC", "1"


async def test_a_hosting_tui_serves_other_terminals_and_frees_the_store_on_quit(
    home: Path, btc_1m: pd.DataFrame
) -> None:
    ws = Workstation()
    con = ws.con()
    upsert_candles(con, btc_1m.head(3000))
    report = train_model(con, "xgboost", MARKET, UNIT, params={"n_estimators": 10})
    app = UpquantApp(con, MARKET, UNIT, offline=True, replay_delay=0, replay_candles=200)
    try:
        async with hosting(ws) as info:
            app.server_note = f"serving {info.url}"
            assert running_server() == info and info.pid == os.getpid()
            assert info.url.startswith("http://127.0.0.1:")
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                # another terminal: its own process, the same home
                models, data, server = await asyncio.gather(
                    asyncio.to_thread(upquant, home, "models", "list", "--json"),
                    asyncio.to_thread(upquant, home, "data", "status", "--json"),
                    asyncio.to_thread(upquant, home, "server", "status", "--json"),
                )
                assert models.returncode == 0, models.stderr
                assert [m["ref"] for m in json.loads(models.stdout)] == [report.model.ref]
                assert data.returncode == 0, data.stderr
                assert [(s["market"], s["rows"]) for s in json.loads(data.stdout)] == [
                    (MARKET, 3000)
                ]
                assert server.returncode == 0, server.stderr
                served = json.loads(server.stdout)
                assert (served["url"], served["pid"]) == (info.url, os.getpid())
                # the TUI's own session runs beside the server, with the trained champion
                assert app.view is not None and app.view.mode == "replay"
                panel = app.screen.query_one(PredictionPanel)
                assert panel.model_ref == report.model.ref
                assert app.screen.query_one(SignalLog).row_count == 200
                assert info.url in app.sub_title
                await pilot.press("q")
            assert read_server_info(home) == info  # the server outlives the app's flush
    finally:
        stop_workstation(ws)
    assert not (home / "server.json").exists()
    # the store is free: a local command opens it; the replay's signals were all stored
    local = await asyncio.to_thread(upquant, home, "data", "status", "--json")
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)[0]["rows"] == 3000
    with connect() as store:
        assert store.execute("SELECT count(*) FROM signals").fetchone() == (200,)


def test_upquant_tui_in_a_terminal_hosts_the_server_until_quit(home: Path) -> None:
    """The command itself, in a pseudo-terminal: server.json names it while it runs, another
    process's command goes through it, `q` quits, the server stops with it and says so."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    from tests.tui.test_cli import UPQUANT

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [UPQUANT, "tui", "--offline", "--replay-delay", "0.05", "--replay-candles", "50"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        env={**os.environ, "UPQUANT_HOME": str(home), "TERM": "xterm-256color"},
    )
    os.close(slave)
    shown = bytearray()

    def read(seconds: float) -> None:
        ready, _, _ = select.select([master], [], [], seconds)
        if ready:
            try:
                shown.extend(os.read(master, 1 << 16))
            except OSError:  # the terminal's other end is gone
                time.sleep(seconds)

    try:
        deadline = time.monotonic() + 120
        while (info := read_server_info(home)) is None or info.pid != process.pid:
            assert process.poll() is None, shown.decode(errors="replace")
            assert time.monotonic() < deadline, "no server.json after 120 s"
            read(0.1)
        server = upquant(home, "server", "status", "--json")
        assert server.returncode == 0, server.stderr
        assert json.loads(server.stdout)["pid"] == process.pid
        os.write(master, b"q")
        while process.poll() is None:
            assert time.monotonic() < deadline, "the TUI did not quit"
            read(0.1)
        for _ in range(20):  # what it printed after the terminal was given back
            read(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)
    assert process.returncode == 0, shown.decode(errors="replace")
    assert not (home / "server.json").exists()
    text = shown.decode(errors="replace")
    assert "stopped the server this TUI hosted at" in text and str(process.pid) in text
