"""`upquant serve` as a real process: it answers, a second one on the same home is refused,
`server status` names it, `server stop` and SIGTERM stop it cleanly (exit 0, server.json
gone), a stale server.json is replaced, a port in use is said plainly; `upquant token ...`
in process and through the server, the secret shown once and never listed."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.server.lifecycle import read_server_info, this_server, write_server_info
from tests.tui.test_cli import UPQUANT, upquant

pytestmark = pytest.mark.slow


@dataclass
class Served:
    home: Path
    process: subprocess.Popen[str]
    url: str

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal the server; its exit code and stderr."""
        self.process.send_signal(signum)
        _out, err = self.process.communicate(timeout=120)
        return self.process.returncode, err


def start(home: Path, *args: str) -> Served:
    """`upquant serve --port 0` on `home`, once server.json names it."""
    process = subprocess.Popen(
        [UPQUANT, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "UPQUANT_HOME": str(home)},
    )
    deadline = time.monotonic() + 120
    while (info := read_server_info(home)) is None or info.pid != process.pid:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no server.json after 120 s: {process.communicate()}")
        time.sleep(0.1)
    return Served(home, process, info.url)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.communicate()


def ping(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/api/v1/ping", timeout=30) as answer:
        return dict(json.load(answer))


def call(url: str, op: str, token: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"{url}/api/v1/ops/{op}", json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_server_answers_refuses_a_second_shows_its_status_and_stops(served: Served) -> None:
    home = served.home
    assert ping(served.url)["ok"] is True
    assert mode(home / "server.json") == 0o600 and mode(home / "api-token") == 0o600
    token = (home / "api-token").read_text().strip()
    assert token not in (home / "server.json").read_text()

    second = upquant(home, "serve", "--port", "0")
    assert second.returncode == 1
    assert f"pid {served.process.pid}" in second.stderr and served.url in second.stderr
    assert "upquant server stop" in second.stderr
    assert read_server_info(home).pid == served.process.pid  # type: ignore[union-attr]

    status = upquant(home, "server", "status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["url"], info["pid"], info["jobs"]) == (served.url, served.process.pid, 0)
    assert Path(info["store"]) == home / "upquant.duckdb"
    table = upquant(home, "server", "status")
    assert served.url in table.stdout and str(served.process.pid) in table.stdout

    stop = upquant(home, "server", "stop")
    assert stop.returncode == 0, stop.stderr
    assert str(served.process.pid) in stop.stdout
    assert not (home / "server.json").exists()  # gone when `server stop` returns
    assert served.process.wait(timeout=60) == 0
    assert token not in served.process.communicate()[1]  # the log never shows a token

    gone = upquant(home, "server", "status")
    assert gone.returncode == 1 and "no upquant server is running" in gone.stderr
    assert "upquant serve" in gone.stderr


def test_sigterm_stops_cleanly_and_requests_are_logged(served: Served) -> None:
    ping(served.url)
    code, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    assert not (served.home / "server.json").exists()
    assert '"GET /api/v1/ping HTTP/1.1" 200' in err
    assert err.rstrip().endswith("stopped")


def test_sigint_stops_cleanly_too(served: Served) -> None:
    code, err = served.stop(signal.SIGINT)
    assert code == 0, err
    assert not (served.home / "server.json").exists()


def test_a_stale_server_json_is_replaced(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = this_server("http://127.0.0.1:9")
    write_server_info(type(stale)(stale.url, dead.pid, stale.host, stale.started, None), tmp_path)
    server = start(tmp_path)
    try:
        assert read_server_info(tmp_path).pid == server.process.pid  # type: ignore[union-attr]
        assert ping(server.url)["ok"] is True
    finally:
        assert server.stop()[0] == 0


def test_a_port_in_use_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = upquant(tmp_path, "serve", "--port", str(port))
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "server.json").exists()


def test_a_non_loopback_host_is_warned_about(tmp_path: Path) -> None:
    server = start(tmp_path, "--host", "0.0.0.0")
    assert server.url.startswith("http://127.0.0.1:")  # local faces reach it through loopback
    assert ping(server.url)["ok"] is True
    code, err = server.stop()
    assert code == 0
    assert "WARNING: listening on 0.0.0.0, not loopback" in err and "holds a token" in err


def test_tokens_in_process_then_through_the_server(tmp_path: Path) -> None:
    home = tmp_path
    made = upquant(home, "token", "create", "grafana", "--scope", "read", "--json")
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    assert first["secret"].startswith("upq_") and first["scope"] == "read"

    server = start(home)
    try:
        again = upquant(home, "token", "create", "bot", "--scope", "write")
        assert again.returncode == 0, again.stderr
        assert "shown only now" in again.stdout
        secret = again.stdout.split(": ", 1)[1].split()[0]
        assert secret.startswith("upq_")
        # the new token works on the server, the first one may read but not write
        assert call(server.url, "server_info", secret, {})[0] == 200
        assert call(server.url, "server_info", first["secret"], {})[0] == 200
        assert call(server.url, "token_list", first["secret"], {})[0] == 403

        listed = upquant(home, "token", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["name"], r["scope"]) for r in rows] == [
            ("grafana", "read"), ("local", "write"), ("bot", "write"),
        ]
        assert rows[0]["last_used"] is not None  # it was just used
        for hidden in (first["secret"], secret, (home / "api-token").read_text().strip()):
            assert hidden not in listed.stdout
        assert "sha256" not in listed.stdout and "secret" not in listed.stdout

        revoked = upquant(home, "token", "revoke", str(first["id"]))
        assert revoked.returncode == 0 and "revoked token" in revoked.stdout
        missing = upquant(home, "token", "revoke", "99")
        assert missing.returncode == 1 and "no API token with id 99" in missing.stderr
    finally:
        assert server.stop()[0] == 0
    # back in process: the server's changes are in the store
    table = upquant(home, "token", "list")
    assert table.returncode == 0 and "grafana" in table.stdout and "bot" in table.stdout
    assert json.loads(upquant(home, "token", "list", "--json").stdout)[0]["revoked"] is not None
