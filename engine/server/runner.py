"""`upquant serve`: the one process that owns the store while it runs, and how it stops.

`serve` refuses to start when a server already runs on this home (server.json names a live
process), opens the store through `engine.service.Workstation` and keeps it for its whole
life, makes sure the local faces have a write token (`$UPQUANT_HOME/api-token`), binds the
API (`create_app`) and only then writes server.json, so a face never finds a server that is
not listening. SIGTERM, SIGINT and SIGHUP stop it cleanly: no new connections, in-flight
requests finish (up to `GRACE_S`), the retrain scheduler stops (it starts the retrains that
schedules make due while the server listens: `engine.service.retraining`), training jobs stop
(their runs `interrupted`, resumable), a live engine flushes what it buffered, the store
closes, and server.json goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from engine.server.lifecycle import (
    ServerInfo,
    read_token,
    remove_server_info,
    running_server,
    this_server,
    token_path,
    write_server_info,
    write_token,
)
from engine.service.core import ServiceError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from engine.service import Workstation
    from engine.service.live import LiveStartRequest

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
GRACE_S = 10.0  # how long in-flight requests get to finish on a stop
JOBS_GRACE_S = 30.0  # how long training workers get to stop before they are killed
LOCAL_TOKEN_NAME = "local"
# one line per request: who, what, status, size, time; never a header (tokens travel in one)
ACCESS_FORMAT = '%a "%r" %s %b %Tfs'


class AlreadyRunning(ServiceError):
    status = 409


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    """The URL a local face uses for a server bound to `host`:`port` (a wildcard address is
    reached through loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def ensure_local_token(ws: Workstation) -> bool:
    """Make sure $UPQUANT_HOME/api-token holds a live write-scope token (a new one named
    `local` when the file is missing, or its token unknown, revoked or read-only); True when
    a new one was made."""
    from store.tokens import create_token, verify_token

    con = ws.con()
    secret = read_token()
    if secret is not None:
        record = verify_token(con, secret)
        if record is not None and record.scope == "write":
            token_path().chmod(0o600)  # a file copied in with looser rights is tightened
            return False
    _id, secret = create_token(con, LOCAL_TOKEN_NAME, "write")
    write_token(secret)
    return True


def refuse_second() -> None:
    """AlreadyRunning when a live server owns this home (its stale server.json is removed)."""
    other = running_server()  # a stale server.json (its process gone) is removed here
    if other is not None:
        raise AlreadyRunning(
            f"a server already runs on this home: pid {other.pid} at {other.url}"
            f" (on {other.host})",
            "use it (commands talk to it by themselves), or stop it first with"
            " `upquant server stop`",
        )


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


def _setup_logging(access_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in ("aiohttp.access", "engine.server"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if not access_log:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def listening(
    ws: Workstation,
    host: str,
    port: int,
    *,
    access_log: logging.Logger | None = None,
    live: LiveStartRequest | None = None,
) -> AsyncIterator[ServerInfo]:
    """Serve `create_app(ws)` on `host`:`port` in the running event loop (port 0: any free
    one): server.json is written once it listens (and the `live` session, if any, runs: a
    face that finds the server finds its session) and removed on the way out, after the
    requests in flight finished (up to GRACE_S). `upquant serve` and a TUI hosting its own
    server both run through here."""
    from engine.server.app import create_app
    from engine.service.retraining import RetrainScheduler

    app = create_app(ws)
    scheduler = RetrainScheduler(ws)  # scheduled retrains, while it serves
    runner = web.AppRunner(
        app,
        handle_signals=False,  # the caller's: `serve` stops cleanly, whatever the signal
        access_log_format=ACCESS_FORMAT,
        access_log=access_log,
        shutdown_timeout=GRACE_S,
    )
    await runner.setup()
    info = None
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ServiceError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                "pick another port (`--port N`, 0 for any free one), or stop what uses"
                " this one",
            ) from None
        url = url_of(host, _bound_port(runner, port))
        info = this_server(url)
        ws.serving(url)
        scheduler.start()
        if live is not None:
            status = await ws.start_live(live)
            _say(f"live session: {status.banner}")
        write_server_info(info)
        yield info
    finally:
        try:
            await scheduler.stop()  # no retrain starts while the jobs are being stopped
            # stop accepting, let in-flight requests finish (GRACE_S), close the app
            await runner.cleanup()
        finally:
            if info is not None:
                remove_server_info(info.pid)


async def _run(
    ws: Workstation,
    host: str,
    port: int,
    access_log: bool,
    live: LiveStartRequest | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stops = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # `nohup` keeps ignoring it
        stops.append(signal.SIGHUP)
    for signum in stops:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with listening(
            ws,
            host,
            port,
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
            live=live,
        ) as info:
            url = info.url
            _say(f"upquant server {url} (pid {info.pid}); stop it with `upquant server stop`")
            if not is_loopback(host):
                _say(
                    f"WARNING: listening on {host}, not loopback: anyone who can reach"
                    f" {host}:{url.rsplit(':', 1)[1]} and holds a token can use this"
                    " workstation's API (a read token reads the store, a write token changes"
                    " it and trains). Keep tokens secret, put TLS in front, or bind 127.0.0.1."
                )
            try:
                await stop.wait()
            finally:
                # the session's buffered signals are written before the streams close
                if ws.live_session is not None:
                    await ws.stop_live_async()
                await ws.stop_feeds_async()  # `data stream` feeds: their candles written
            _say("stopping: finishing the requests in flight")
    finally:
        for signum in stops:
            loop.remove_signal_handler(signum)


def stop_workstation(ws: Workstation) -> None:
    """What a stopping server owes the store: jobs interrupted (resumable), the live engine's
    buffered candles and signals written, then the store closed."""
    shutdown_jobs = getattr(ws, "shutdown_jobs", None)
    if callable(shutdown_jobs):
        shutdown_jobs(JOBS_GRACE_S)
    stop_live = getattr(ws, "stop_live", None)  # a live engine run by the server, if any
    if callable(stop_live):
        stop_live()
    ws.close()


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    access_log: bool = True,
    live: LiveStartRequest | None = None,
) -> int:
    """Run the server until a signal stops it; 0 after a clean stop. A second server on this
    home, or a port that cannot be bound, raises ServiceError with nothing left behind.
    `live`: the live session to start once it listens (stopped and flushed on the way out)."""
    from engine.service import Workstation

    refuse_second()
    _setup_logging(access_log)
    ws = Workstation()
    try:
        ws.con()  # open (and migrate) the store now: it is this process's until it stops
        if ensure_local_token(ws):
            _say(f"made a write token for local commands: {token_path()} (mode 0600)")
        asyncio.run(_run(ws, host, port, access_log, live))
    except BaseException:
        with contextlib.suppress(Exception):  # the first failure is the one to report
            stop_workstation(ws)
        raise
    stop_workstation(ws)
    _say("stopped")
    return 0
