"""A TUI that hosts the server: when no `upquant serve` runs, `upquant tui` owns the store and
serves the same API from its own event loop for as long as it runs, so other terminals'
commands still reach the store (through it).

`hosting(ws)` is that server's life: the local token made sure of, `create_app(ws)` listening
on 127.0.0.1 (port 0: any free one), server.json written once it listens and removed on the
way out, after the requests in flight finished. The caller runs the app inside it, so the
session is flushed before the server stops, and closes the Workstation after it
(`stop_workstation`: training jobs interrupted, the live engine flushed, the store closed).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

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
        yield info


async def run_hosted(app: UpquantApp, ws: Workstation, port: int = 0) -> ServerInfo:
    """Run `app` while hosting the server; the server's record once both are done."""
    async with hosting(ws, port) as info:
        app.server_note = f"serving {info.url}"
        await app.run_async()
    return info
