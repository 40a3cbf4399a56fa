"""A TUI that hosts the server: when no `upquant serve` runs, `upquant tui` owns the store and
serves the same API from its own event loop for as long as it runs, so other terminals'
commands still reach the store (through it).

`hosting(ws)` is that server's life: the local token made sure of, `create_app(ws)` listening
on 127.0.0.1 (port 0: any free one), server.json written once it listens and removed on the
way out, after the requests in flight finished. The caller runs the app inside it; the
session is stopped and flushed before the server stops; the caller closes the Workstation
after it (`stop_workstation`: training jobs interrupted, the store closed).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from tui.views import HostedView

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from engine.server.lifecycle import ServerInfo
    from engine.service import Workstation
    from tui.app import UpquantApp

HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def hosting(ws: Workstation, port: int = 0, host: str = HOST) -> AsyncIterator[ServerInfo]:
    """Serve `ws` on `host`:`port` in the running event loop until the block ends (see the
    module docstring); AlreadyRunning when a server already owns this home."""
    from engine.server.runner import ensure_local_token, listening, refuse_second

    refuse_second()
    ensure_local_token(ws)
    async with listening(ws, host, port) as info:
        try:
            yield info
        finally:
            # the session's candles and signals written before the server stops answering
            if ws.live_session is not None:
                await ws.stop_live_async()


async def hosted_session(
    ws: Workstation, market: str, unit: str, **options: Any
) -> HostedView:
    """Start the hosted server's live session (`options`: threshold, offline, replay_delay,
    replay_candles) in the running loop, and the view the TUI draws it through."""
    from engine.service.live import LiveStartRequest

    await ws.start_live(LiveStartRequest(market=market, unit=unit, **options))
    return HostedView(ws)


async def run_hosted(app: UpquantApp, ws: Workstation, port: int = 0) -> ServerInfo:
    """Run `app` while hosting the server; the server's record once both are done."""
    async with hosting(ws, port) as info:
        app.server_note = f"serving {info.url}"
        await app.run_async()
    return info
