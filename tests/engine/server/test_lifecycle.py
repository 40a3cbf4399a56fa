"""server.json and the local token (engine.server.lifecycle), and what `serve` decides before
it listens (engine.server.runner): a live server is found, a dead or reused pid is not (and
its stale file goes), files are private, the local write token is made only when needed."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.server.lifecycle import (
    read_server_info,
    read_token,
    remove_server_info,
    running_server,
    server_json_path,
    this_server,
    token_path,
    write_server_info,
    write_token,
)
from engine.server.runner import (
    AlreadyRunning,
    ensure_local_token,
    is_loopback,
    refuse_second,
    url_of,
)
from engine.service import Workstation
from store.tokens import create_token, revoke_token, verify_token


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_server_json_is_private_atomic_and_read_back(home: Path) -> None:
    info = this_server("http://127.0.0.1:8765")
    path = write_server_info(info)
    assert path == home / "server.json" == server_json_path()
    assert _mode(path) == 0o600
    assert [p.name for p in home.iterdir()] == ["server.json"]  # no temp file left behind
    assert read_server_info() == info
    assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_live_server_is_found(home: Path) -> None:
    info = this_server("http://127.0.0.1:8765")
    write_server_info(info)
    assert running_server() == info
    assert server_json_path().exists()


def test_a_dead_pid_is_stale_and_its_file_removed(home: Path) -> None:
    write_server_info(replace(this_server("http://127.0.0.1:1"), pid=_dead_pid()))
    assert running_server() is None
    assert not server_json_path().exists()


def test_a_reused_pid_is_not_the_server(home: Path) -> None:
    # this process's pid, but another process start: the recorded server died, its pid reused
    write_server_info(replace(this_server("http://127.0.0.1:1"), process="another-boot:12"))
    assert running_server() is None
    assert not server_json_path().exists()


def test_without_a_recorded_start_a_process_younger_than_the_server_is_not_it(home: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = datetime.now(UTC) - timedelta(hours=1)  # the server started an hour ago
        write_server_info(replace(this_server("x"), pid=child.pid, started=started, process=None))
        assert running_server() is None
        older = replace(this_server("x"), pid=child.pid, process=None)  # started after it
        write_server_info(replace(older, started=older.started + timedelta(minutes=1)))
        assert running_server() is not None
    finally:
        child.kill()
        child.wait()


def test_another_hosts_server_is_trusted_and_garbage_is_no_server(home: Path) -> None:
    info = replace(this_server("http://10.0.0.2:8765"), host=socket.gethostname() + "-other", pid=_dead_pid())
    write_server_info(info)
    assert running_server() == info  # its process cannot be seen from here
    server_json_path().write_text("{not json")
    assert read_server_info() is None and running_server() is None


def test_removing_keeps_another_servers_file(home: Path) -> None:
    write_server_info(this_server("http://127.0.0.1:1"))
    remove_server_info(os.getpid() + 1)
    assert server_json_path().exists()
    remove_server_info(os.getpid())
    assert not server_json_path().exists()
    remove_server_info()  # nothing there: no error


def test_the_token_file_is_private(home: Path) -> None:
    assert read_token() is None
    write_token("upq_secret")
    assert token_path() == home / "api-token"
    assert _mode(token_path()) == 0o600 and read_token() == "upq_secret"


def test_a_local_write_token_is_made_only_when_the_file_has_no_valid_one(home: Path, con) -> None:  # type: ignore[no-untyped-def]
    ws = Workstation(con)
    assert ensure_local_token(ws) is True
    first = read_token()
    assert first is not None
    record = verify_token(con, first)
    assert record is not None and (record.name, record.scope) == ("local", "write")
    token_path().chmod(0o644)
    assert ensure_local_token(ws) is False and read_token() == first
    assert _mode(token_path()) == 0o600  # tightened

    revoke_token(con, record.id)
    assert ensure_local_token(ws) is True and read_token() != first

    _id, reader = create_token(con, "ro", "read")
    write_token(reader)
    assert ensure_local_token(ws) is True and read_token() != reader  # a read token won't do


def test_a_second_server_on_the_same_home_is_refused(home: Path) -> None:
    info = this_server("http://127.0.0.1:8765")
    write_server_info(info)
    with pytest.raises(AlreadyRunning) as refused:
        refuse_second()
    assert f"pid {info.pid}" in str(refused.value) and info.url in str(refused.value)
    assert "upquant server stop" in (refused.value.hint or "")
    write_server_info(replace(info, pid=_dead_pid()))
    refuse_second()  # stale: no refusal, and the file is gone
    assert not server_json_path().exists()


@pytest.mark.parametrize(
    ("host", "loopback", "url"),
    [
        ("127.0.0.1", True, "http://127.0.0.1:80"),
        ("localhost", True, "http://localhost:80"),
        ("::1", True, "http://[::1]:80"),
        ("0.0.0.0", False, "http://127.0.0.1:80"),
        ("::", False, "http://[::1]:80"),
        ("192.168.1.5", False, "http://192.168.1.5:80"),
    ],
)
def test_loopback_and_the_url_local_faces_use(host: str, loopback: bool, url: str) -> None:
    assert is_loopback(host) is loopback
    assert url_of(host, 80) == url
