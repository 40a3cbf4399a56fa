"""The HTTP transport of the facade against a real server on 127.0.0.1 (the app on its own
thread and event loop, as `upquant serve` runs it): the same models as in process, remote
failures as RemoteError, a dead server said plainly, and the CLI routed through a server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from engine.server.app import create_app
from engine.service import Workstation
from engine.service.data import DataStatus, DataStatusRequest
from engine.service.prediction import PredictRequest, StorePredictionsRequest
from store.candles import upsert_candles
from store.tokens import create_token
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant
from tui.client import HttpWorkstation, RemoteError, ServerUnreachable


class ThreadServer:
    """The app served on 127.0.0.1 (a free port) by an event loop on its own thread."""

    def __init__(self, app: web.Application, keepalive_timeout: float = 75.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, keepalive_timeout=keepalive_timeout)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture
def served(con) -> Iterator[tuple[ThreadServer, dict[str, str]]]:  # type: ignore[no-untyped-def]
    upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 500))
    upsert_candles(con, shared_candles("KRW-ETH_1m.csv", 300, market="KRW-ETH"))
    tokens = {scope: create_token(con, scope, scope)[1] for scope in ("read", "write")}
    server = ThreadServer(create_app(Workstation(con)))
    yield server, tokens
    server.stop()


def test_the_client_answers_the_models_the_workstation_does(con, served) -> None:  # type: ignore[no-untyped-def]
    server, tokens = served
    with HttpWorkstation(server.url, tokens["read"]) as remote:
        for gap in (1, 2, 7):
            request = DataStatusRequest(min_gap=gap)
            answer = remote.data_status(request)
            assert type(answer) is DataStatus
            assert answer == Workstation(con).data_status(request)
        assert len(answer.root) == 2
        assert "data_status" in dir(remote) and remote.data_status.__name__ == "data_status"
        with pytest.raises(TypeError, match="data_status takes a DataStatusRequest"):
            remote.data_status(PredictRequest(model="x"))
        with pytest.raises(AttributeError, match="no operation 'data_statuz'"):
            remote.data_statuz  # noqa: B018


def test_failures_raise_remote_error_with_the_servers_words(served) -> None:  # type: ignore[no-untyped-def]
    server, tokens = served
    with HttpWorkstation(server.url, tokens["write"]) as remote:
        with pytest.raises(RemoteError) as missing:
            remote.predict(PredictRequest(model="nope"))
        assert missing.value.status == 404 and str(missing.value).startswith("no model 'nope'")
    with HttpWorkstation(server.url, tokens["read"]) as reader:
        with pytest.raises(RemoteError) as refused:
            reader.store_predictions(StorePredictionsRequest(model="nope"))
        assert refused.value.status == 403 and "write" in (refused.value.hint or "")
    with HttpWorkstation(server.url, "upq_not-a-token") as stranger:
        with pytest.raises(RemoteError) as unknown:
            stranger.data_status(DataStatusRequest())
        assert unknown.value.status == 401 and "api-token" in (unknown.value.hint or "")
        assert "upq_not-a-token" not in str(unknown.value) + (unknown.value.hint or "")


def test_a_server_that_is_not_there_is_said_plainly() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        HttpWorkstation(f"http://127.0.0.1:{port}", "upq_x") as remote,
        pytest.raises(ServerUnreachable) as gone,
    ):
        remote.data_status(DataStatusRequest())
    assert str(gone.value) == f"the upquant server at http://127.0.0.1:{port} is not answering"
    assert "upquant server status" in (gone.value.hint or "")
    with pytest.raises(ValueError, match="is not http://HOST:PORT"):
        HttpWorkstation("https://example", "t")


def test_one_connection_is_kept_alive_and_renewed_when_the_server_drops_it(con) -> None:  # type: ignore[no-untyped-def]
    upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 200))
    _, secret = create_token(con, "cli", "read")
    server = ThreadServer(create_app(Workstation(con)), keepalive_timeout=0.2)
    try:
        with HttpWorkstation(server.url, secret) as remote:
            first = remote.data_status(DataStatusRequest())
            kept = remote._conn
            assert remote.data_status(DataStatusRequest()) == first
            assert remote._conn is kept and kept is not None
            time.sleep(1.5)  # the server closes the idle connection (after 0.2 s)
            assert remote.data_status(DataStatusRequest()) == first  # sent again, not failed
            assert remote._conn is not kept
    finally:
        server.stop()


def test_the_cli_goes_through_a_running_server(home: Path, con, served) -> None:  # type: ignore[no-untyped-def]
    server, tokens = served
    info = {"url": server.url, "pid": os.getpid(), "host": "127.0.0.1",
            "started": datetime.now(UTC).isoformat()}
    (home / "server.json").write_text(json.dumps(info))
    (home / "api-token").write_text(tokens["write"] + "\n")
    (home / "api-token").chmod(0o600)
    expected = Workstation(con).data_status(DataStatusRequest(min_gap=3)).model_dump(mode="json")
    # this process holds the store: only the server's answer can reach the command
    routed = upquant(home, "data", "status", "--min-gap", "3", "--json")
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout) == expected
    failed = upquant(home, "predict", "nope", "KRW-BTC")
    assert failed.returncode == 1 and "error: no model 'nope'" in failed.stderr
    assert tokens["write"] not in failed.stdout + failed.stderr
    forced = upquant(home, "data", "status", "--json", env={"UPQUANT_SERVER": "off"})
    assert forced.returncode == 1 and "is in use by" in forced.stderr
