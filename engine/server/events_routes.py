"""`GET /api/v1/events`: the Workstation's events as a WebSocket, one JSON text frame each.

Auth is the app's, as for every route (a read token suffices: listening changes nothing).
The first frame is `{"type": "hello", "server": <server_info>, "live": <LiveStatus>}`; then
every event of the Workstation's hub (engine/service/events.py), as it happens:

    {"type": "candle", "market", "unit", "closed": bool, "candle": {"ts", "open", ..., "value"}}
    {"type": "signal", "market", "unit", "signal": {"ts", "market", "action", ...}, "probs"}
    {"type": "status", "text", "level", "connected"}
    {"type": "live", "live": <LiveStatus>}     a session opened, ended, its threshold moved
    {"type": "job", "run", "status", "progress", "message"}

A client reading too slowly loses forming candles first (coalesced per market), never a
closed candle or a signal; one that falls more than the hub's bound behind is closed with
1013 (try again later: reconnect, reload). The server stopping closes every stream with 1001.
Messages from the client are read (pings, close) and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, web

from engine.service.events import Subscriber

log = logging.getLogger(__name__)

PATH = "/api/v1/events"
HEARTBEAT_S = 20.0

OPENAPI: dict[str, Any] = {
    PATH: {
        "get": {
            "operationId": "events",
            "summary": "The events WebSocket: hello, candle, signal, status, live, job",
            "description": __doc__,
            "tags": ["events"],
            "x-scope": "read",
            "responses": {
                "101": {
                    "description": "Switching to the WebSocket protocol; JSON text frames follow"
                },
                "401": {"description": "No API token, or an unknown or revoked one"},
            },
        }
    }
}


async def _send(sock: web.WebSocketResponse, subscriber: Subscriber) -> None:
    while (frame := await subscriber.get()) is not None:
        await sock.send_str(frame)
    if subscriber.lagging:
        await sock.close(
            code=WSCloseCode.TRY_AGAIN_LATER,
            message=b"too far behind: reconnect and reload",
        )
    else:
        await sock.close(code=WSCloseCode.GOING_AWAY, message=b"the server stops")


async def events(request: web.Request) -> web.StreamResponse:
    from engine.server.app import EXECUTOR, WORKSTATION
    from engine.service.live import LiveStatusRequest
    from engine.service.system import ServerInfoRequest

    ws = request.app[WORKSTATION]
    sock = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
    await sock.prepare(request)
    hub = ws.events
    subscriber = hub.subscribe()  # before hello: nothing after the hello's status is missed
    try:
        loop = asyncio.get_running_loop()
        server = await loop.run_in_executor(
            request.app[EXECUTOR], ws.server_info, ServerInfoRequest()
        )
        hello = {
            "type": "hello",
            "server": server.model_dump(mode="json"),
            "live": ws.live_status(LiveStatusRequest()).model_dump(mode="json"),
        }
        await sock.send_str(json.dumps(hello))
        sender = asyncio.create_task(_send(sock, subscriber))
        try:
            async for _message in sock:  # pings, pongs and close are handled by aiohttp
                pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
    finally:
        hub.unsubscribe(subscriber)
    return sock


def add_events_routes(app: web.Application) -> None:
    """Mount `GET /api/v1/events` on `app`; its startup gives the Workstation the app's loop
    (sessions and events run there), its shutdown closes every stream."""
    from engine.server.app import WORKSTATION

    app.router.add_get(PATH, events)

    async def attach(app: web.Application) -> None:
        app[WORKSTATION].attach_loop(asyncio.get_running_loop())

    async def close_streams(app: web.Application) -> None:
        app[WORKSTATION].events.close_all()

    app.on_startup.append(attach)
    app.on_shutdown.append(close_streams)
