"""A TUI that hosts the server: while it runs, commands from another terminal (real `upquant`
processes on the same home) reach the store through it; on quit the server stops after the
session's flush, server.json goes and the store is free for a local command."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
from textual.pilot import Pilot

from engine.server.lifecycle import read_server_info, read_token, running_server
from engine.server.runner import stop_workstation
from engine.service import Workstation
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from tests.tui.test_cli import UPQUANT, upquant
from tests.tui.test_serve import call
from tests.tui.test_tui import SIZE
from tui.app import UpquantApp
from tui.host import hosted_session, hosting
from tui.views import HostedView
from tui.widgets import PredictionPanel, SignalLog

MARKET, UNIT = "KRW-BTC", "1"


async def until(pilot: Pilot, check: Callable[[], bool], what: str, tries: int = 1200) -> None:
    """Let the app run until `check()` holds (events cross threads, processes, sockets)."""
    for _ in range(tries):
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_a_hosting_tui_serves_other_terminals_and_frees_the_store_on_quit(
    home: Path, btc_1m: pd.DataFrame
) -> None:
    ws = Workstation()
    con = ws.con()
    upsert_candles(con, btc_1m.head(3000))
    report = train_model(con, "xgboost", MARKET, UNIT, params={"n_estimators": 10})
    factory = partial(
        hosted_session, ws, MARKET, UNIT, offline=True, replay_delay=0.05, replay_candles=2000
    )
    app = UpquantApp(None, MARKET, UNIT, session_factory=factory)
    try:
        async with hosting(ws) as info:
            app.server_note = f"serving {info.url}"
            assert running_server() == info and info.pid == os.getpid()
            assert info.url.startswith("http://127.0.0.1:")
            async with app.run_test(size=SIZE) as pilot:
                log, panel = app.screen.query_one(SignalLog), app.screen.query_one(PredictionPanel)
                await until(pilot, lambda: log.row_count >= 3, "signals of the hosted session")
                # the TUI draws the server's own session: the same engine
                session = ws.live_session
                assert isinstance(app.view, HostedView) and session is not None
                assert app.view.engine is session.engine and app.view.mode == "replay"
                assert panel.model_ref == report.model.ref and info.url in app.sub_title
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
                # ... sees the same session, and moves its threshold: the TUI shows it
                token = read_token()
                assert token is not None
                code, live = await asyncio.to_thread(call, info.url, "live_status", token, {})
                assert code == 200 and live["running"] is True and live["mode"] == "replay"
                assert live["model_ref"] == report.model.ref
                code, moved = await asyncio.to_thread(
                    call, info.url, "live_threshold", token, {"threshold": 0.7}
                )
                assert code == 200, moved
                await until(pilot, lambda: panel.threshold == 0.7, "the threshold moved elsewhere")
                await pilot.press("-")  # and the TUI's key moves the server's threshold
                assert panel.threshold == session.engine.threshold == 0.65
                code, live = await asyncio.to_thread(call, info.url, "live_status", token, {})
                assert live["threshold"] == 0.65
                await pilot.press("q")
            assert read_server_info(home) == info  # the server outlives the app...
            assert session.engine.signals  # ...and its session still plays
    finally:
        stop_workstation(ws)
    assert not (home / "server.json").exists()
    emitted = len(session.engine.signals)
    # the store is free: a local command opens it; every signal was stored before the stop
    local = await asyncio.to_thread(upquant, home, "data", "status", "--json")
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)[0]["rows"] == 3000
    with connect() as store:
        assert store.execute("SELECT count(*) FROM signals").fetchone() == (emitted,)


class Terminal:
    """`upquant ARGS` in a pseudo-terminal of 120x40 on `home`: what it shows, keys sent."""

    def __init__(self, home: Path, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.master, self.shown = master, bytearray()
        self.process = subprocess.Popen(
            [UPQUANT, *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env={**os.environ, "UPQUANT_HOME": str(home), "TERM": "xterm-256color"},
        )
        os.close(slave)
        self.deadline = time.monotonic() + 120

    @property
    def text(self) -> str:
        return self.shown.decode(errors="replace")

    def read(self, seconds: float = 0.1) -> None:
        ready, _, _ = select.select([self.master], [], [], seconds)
        if ready:
            try:
                self.shown.extend(os.read(self.master, 1 << 16))
            except OSError:  # the terminal's other end is gone
                time.sleep(seconds)

    def until(self, check: Callable[[], bool], what: str) -> None:
        while not check():
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.text}"
            assert time.monotonic() < self.deadline, f"never happened: {what}"
            self.read()

    def quit(self) -> int:
        """Press q; the exit code once it is gone (what it printed after the TUI read)."""
        try:
            os.write(self.master, b"q")
            while self.process.poll() is None:
                assert time.monotonic() < self.deadline, "the TUI did not quit"
                self.read()
            for _ in range(20):
                self.read(0.05)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            os.close(self.master)
        return self.process.returncode


def test_upquant_tui_in_a_terminal_hosts_the_server_until_quit(home: Path) -> None:
    """The command itself, in a pseudo-terminal: server.json names it while it runs, another
    process's command goes through it, `q` quits, the server stops with it and says so."""
    tui = Terminal(home, "tui", "--offline", "--replay-delay", "0.05", "--replay-candles", "50")
    tui.until(
        lambda: (info := read_server_info(home)) is not None and info.pid == tui.process.pid,
        "server.json names the TUI",
    )
    server = upquant(home, "server", "status", "--json")
    assert server.returncode == 0, server.stderr
    assert json.loads(server.stdout)["pid"] == tui.process.pid
    assert tui.quit() == 0, tui.text
    assert not (home / "server.json").exists()
    assert "stopped the server this TUI hosted at" in tui.text
    assert str(tui.process.pid) in tui.text
