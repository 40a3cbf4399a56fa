"""`upquant serve`, `upquant server status|stop` and `upquant token create|list|revoke`: the
server that owns the store, and the API tokens that let faces call it.

The token commands are facade operations (`engine.service.system`): with a server running
they ask it over HTTP, without one they open the store themselves. `server status` exits 1
when no server runs (a script can test `upquant server status >/dev/null`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import UTC, datetime
from typing import Annotated, Literal, cast

import typer
from rich.table import Table

from engine.params import THRESHOLD_MAX, THRESHOLD_MIN
from tui.cli.options import JsonOpt, workstation
from tui.cli.render import CliError, console, emit_json, styled

server_app = typer.Typer(help="The running upquant server: status, stop.", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens for the server: create (the secret is shown once), list, revoke.",
    no_args_is_help=True,
)

STOP_WAIT_S = 60.0  # a stop waits for in-flight requests and training workers


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Anything but loopback lets other machines reach the"
            " API (every call still needs a token).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port; 0 picks a free one.")
    ] = 8765,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No log line per request (errors still log).")
    ] = False,
    market: Annotated[
        str | None,
        typer.Option(
            "--market",
            help="Run a live session of this market once listening (GET /api/v1/events"
            " streams it); without it none runs until POST /api/v1/live.",
        ),
    ] = None,
    markets: Annotated[
        str | None,
        typer.Option(
            "--markets",
            help="Run a live session over this watchlist (comma-separated): every market"
            " decided in one pass per closed candle; MARKET:UNIT (KRW-ETH:60) watches one at"
            " its own unit.",
        ),
    ] = None,
    all_krw: Annotated[
        bool,
        typer.Option(
            "--all-krw",
            help="Run a live session over every KRW market Upbit lists (offline: every"
            " stored series of the unit).",
        ),
    ] = False,
    strategy_spec: Annotated[
        str | None,
        typer.Option("--strategy-spec", help="The live session's strategy spec (.json/.toml)."),
    ] = None,
    unit: Annotated[str, typer.Option("--unit", help="Candle unit of the live session.")] = "1",
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help=f"Confidence threshold of the live session ({THRESHOLD_MIN}..{THRESHOLD_MAX};"
            " default: the strategy spec's, else 0.5).",
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never contact Upbit: replay stored candles.")
    ] = False,
    replay_delay: Annotated[
        float, typer.Option("--replay-delay", min=0, help="Seconds between replayed candles.")
    ] = 0.25,
    replay_candles: Annotated[
        int, typer.Option("--replay-candles", min=1, help="Stored candles a replay plays.")
    ] = 2000,
) -> None:
    """Run the upquant server: it owns the store, serves the REST API (/api/v1/docs), and
    every other command talks to it while it runs. With --market (or a watchlist:
    --markets, --all-krw) it also runs a live session (signals stored, paper-traded, events
    streamed). Stop it with Ctrl-C, SIGTERM or
    `upquant server stop`."""
    from engine.server.runner import serve as run_server

    live = None
    if market is not None or markets is not None or all_krw:
        from pydantic import ValidationError

        from engine.service.live import LiveStartRequest
        from tui.cli.live import _spec_table

        names = [m.strip() for m in (markets or "").split(",") if m.strip()]
        try:
            live = LiveStartRequest(
                market=market,
                markets=names,
                all_krw=all_krw,
                strategy_spec=_spec_table(strategy_spec),
                unit=unit,
                threshold=threshold,
                offline=offline,
                replay_delay=replay_delay,
                replay_candles=replay_candles,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            option = str(first["loc"][0]).replace("_", "-")
            raise CliError(
                f"--{option}: {first['msg'].removeprefix('Value error, ')}",
                "see `upquant serve --help`",
            ) from None
    raise typer.Exit(run_server(host, port, access_log=not quiet, live=live))


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """The running server: URL, pid, uptime, version, store, training jobs (exit 1 when
    none runs)."""
    from engine.service.system import ServerInfo, ServerInfoRequest
    from tui.client import server_client

    client = server_client()
    if client is None:
        raise CliError(
            "no upquant server is running on this home",
            "start one with `upquant serve`; meanwhile commands open the store themselves",
        )
    with client:
        info = cast("ServerInfo", client.server_info(ServerInfoRequest()))
    if as_json:
        emit_json(info.model_dump(mode="json"))
        return
    table = Table(show_header=False, box=None)
    for key, value in (
        ("url", info.url or "-"),
        ("pid", str(info.pid)),
        ("started", f"{info.started:%Y-%m-%d %H:%M:%S} UTC"),
        ("uptime", _uptime(info.uptime_s)),
        ("version", info.version),
        ("store", info.store),
        ("jobs", f"{info.jobs} training run(s) queued or running"),
    ):
        table.add_row(key, value)
    console.print(table)


@server_app.command("stop")
def server_stop(
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for it to stop.")
    ] = STOP_WAIT_S,
) -> None:
    """Stop the running server (SIGTERM: requests in flight finish, training runs are marked
    interrupted and resumable), and wait until it is gone."""
    from engine.server.lifecycle import read_server_info, running_server

    info = running_server()
    if info is None:
        console.print("no upquant server is running on this home")
        return
    if info.host != socket.gethostname():
        raise CliError(
            f"the server (pid {info.pid}) runs on {info.host}, not here",
            f"stop it on {info.host}",
        )
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it stopped in the meantime
    except PermissionError:
        raise CliError(
            f"not allowed to stop the server (pid {info.pid}): another user runs it",
            "stop it as that user",
        ) from None
    deadline = time.monotonic() + timeout
    while (current := read_server_info()) is not None and current.pid == info.pid:
        if running_server() is None:  # died without cleaning up: its file is removed now
            break
        if time.monotonic() > deadline:
            raise CliError(
                f"the server (pid {info.pid}) has not stopped after {timeout:.0f}s",
                f"it may be waiting on training workers; `kill -9 {info.pid}` forces it",
            )
        time.sleep(0.1)
    console.print(styled(f"stopped the upquant server (pid {info.pid}, {info.url})"))


ScopeOpt = Annotated[
    Literal["read", "write"],
    typer.Option(
        "--scope",
        help="read: only operations that change nothing; write: every operation.",
    ),
]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. grafana.")],
    scope: ScopeOpt = "read",
    as_json: JsonOpt = False,
) -> None:
    """Create an API token. Its secret is printed once, now: it cannot be shown again."""
    from engine.service.system import TokenCreateRequest

    with workstation() as ws:
        created = ws.token_create(TokenCreateRequest(name=name, scope=scope))
    if as_json:
        emit_json(created.model_dump(mode="json"))
        return
    console.print(
        f"token {created.id} {created.name!r} ({created.scope}): {created.secret}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        styled(("this secret is shown only now; store it safely", "yellow")), highlight=False
    )


def _stamp(value: datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Every API token: id, name, scope, created, last used, revoked (never a secret)."""
    from engine.service.system import TokenListRequest

    with workstation() as ws:
        tokens = ws.token_list(TokenListRequest())
    if as_json:
        emit_json(tokens.model_dump(mode="json"))
        return
    if not tokens.root:
        console.print("no API tokens yet: `upquant serve` makes one, `upquant token create` more")
        return
    table = Table("id", "name", "scope", "created (UTC)", "last used (UTC)", "revoked (UTC)")
    for token in tokens.root:
        table.add_row(
            str(token.id),
            token.name,
            token.scope,
            _stamp(token.created),
            _stamp(token.last_used),
            _stamp(token.revoked),
        )
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (token list).")],
) -> None:
    """Revoke an API token: the server refuses it from then on (within 10 seconds)."""
    from engine.service.system import TokenRevokeRequest

    with workstation() as ws:
        token = ws.token_revoke(TokenRevokeRequest(id=token_id))
    console.print(f"revoked token {token.id} {token.name!r} ({token.scope})", highlight=False)
