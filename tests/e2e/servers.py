"""Real `upquant serve` processes for the end-to-end tests: started on port 0 over a tmp
UPQUANT_HOME (their log in a file beside it, never a pipe a busy server could fill), asked
over HTTP with the home's write token, killed with SIGKILL or stopped with SIGTERM, and the
processes they spawned (training workers) watched after their server is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engine.server.lifecycle import read_server_info
from tests.conftest import DATA
from tests.tui.test_cli import UPQUANT, upquant

START_S = 120.0  # a server that has not written server.json by then has failed


def wait_for(what: str, ready: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Poll `ready` until it answers something true (returned), failing after `timeout` s: a
    hang fails the test instead of stalling CI."""
    deadline = time.monotonic() + timeout
    while not (answer := ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return answer


def children(pid: int) -> list[int]:
    """Every descendant of process `pid` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass
class Server:
    home: Path
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def token(self) -> str:
        return (self.home / "api-token").read_text().strip()

    def call(
        self, op: str, body: dict[str, Any] | None = None, token: str | None = None,
        timeout: float = 60,
    ) -> tuple[int, Any]:
        """POST /api/v1/ops/{op}: (HTTP status, decoded JSON answer)."""
        request = urllib.request.Request(
            f"{self.url}/api/v1/ops/{op}", json.dumps(body or {}).encode(), method="POST",
            headers={
                "Authorization": f"Bearer {token or self.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    def ok(self, op: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = self.call(op, body)
        assert status == 200, (op, status, answer)
        return answer

    def kill(self) -> list[int]:
        """SIGKILL the server (nothing of it runs any more when this returns); the pids of
        the processes it had spawned, to watch."""
        spawned = children(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=60)
        return spawned

    def stop(self) -> int:
        """SIGTERM: its exit code once it has stopped cleanly."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def serve(home: Path, *args: str) -> Server:
    """`upquant serve --port 0` on `home`, returned once server.json names it."""
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [UPQUANT, "serve", "--port", "0", *args],
            stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "UPQUANT_HOME": str(home)},
            start_new_session=True,  # the test's Ctrl-C is not the server's
        )

    def named() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
        info = read_server_info(home)
        return info is not None and info.pid == process.pid

    try:
        wait_for("server.json to name the new server", named, START_S)
    except AssertionError:
        process.kill()
        process.wait()
        raise
    info = read_server_info(home)
    assert info is not None
    return Server(home, process, info.url, log)


@dataclass
class Servers:
    """Every server (and stray process) a test started, killed at its end whatever happened."""

    started: list[Server] = field(default_factory=list)
    strays: list[int] = field(default_factory=list)

    def __call__(self, home: Path, *args: str) -> Server:
        server = serve(home, *args)
        self.started.append(server)
        return server

    def cleanup(self) -> None:
        for server in self.started:
            if server.process.poll() is None:
                self.strays.extend(children(server.process.pid))
                server.process.kill()
                server.process.wait()
        for pid in self.strays:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def store_with_candles(root: Path, rows: int = 3000) -> Path:
    """A home under `root` holding the first `rows` real KRW-BTC 1-minute candles (imported
    in process: no server runs yet)."""
    csv = root / "btc.csv"
    pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=rows).to_csv(csv, index=False)
    home = root / "home"
    imported = upquant(home, "data", "import", str(csv), "--market", "KRW-BTC", "--unit", "1")
    assert imported.returncode == 0, imported.stderr
    return home
