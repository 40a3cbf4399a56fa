"""The server and feed events the Signals screen logs, and where they come from.

Two sources, one line each: the session's messages (tui/messages.py: feed status, the
session opened, ended or failed) and the Workstation's events (engine/service/events.py
frames: status of every feed, the live session's changes, training jobs, every market's
signals). `follow_events(facade, on_frame)` reads the latter from the in-process
Workstation's hub, or, when the TUI is a client of a server (`HttpWorkstation`), from the
server's events WebSocket, reconnecting when it drops. `EventDigest` turns a frame or a
message into a line, or into nothing: candles are not logged, a training job's progress
only when its status changes, and a line said twice within a few seconds (the hosted
session's status reaches the TUI both ways) once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from textual.message import Message

from tui import messages

if TYPE_CHECKING:
    from tui.views import SessionView

BACKOFF_S = (0.5, 10.0)  # the events WebSocket's first wait before a reconnect, the longest
REPEAT_S = 5.0  # the same line again within this many seconds is the same event
CANDLE_PREFIX = '{"type":"candle"'  # the hub's compact frames: skipped without parsing


@dataclass(frozen=True)
class EventLine:
    ts: datetime  # when it reached the TUI (UTC)
    level: str  # info, warning or error
    source: str  # feed, session, server or job
    text: str


class EventDigest:
    """Frames and messages to log lines (see the module docstring); keeps what it needs to
    say only changes (each job's status, the live session's state)."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self._jobs: dict[int, str] = {}
        self._live = ""
        self._said: dict[tuple[str, str], float] = {}

    def frame(self, frame: Mapping[str, Any]) -> list[EventLine]:
        """The lines for one events frame (none: nothing to log)."""
        kind = frame.get("type")
        lines: list[EventLine | None] = []
        if kind == "status":
            source = "feed" if frame.get("feed") is not None else "session"
            lines.append(self._line(str(frame.get("level") or "info"), source, str(frame["text"])))
        elif kind == "hello":
            server = frame.get("server") or {}
            where = f"the server {server['url']}" if server.get("url") else "this process"
            version = f" (upquant {server['version']})" if server.get("version") else ""
            lines.append(self._line("info", "server", f"following the events of {where}{version}"))
            if frame.get("live") is not None:  # what the server's session is at the start
                lines.append(self._live_line(frame["live"]))
        elif kind == "live":
            lines.append(self._live_line(frame.get("live") or {}))
        elif kind == "job":
            lines.append(self._job_line(frame))
        return [line for line in lines if line is not None]  # candles, signals: not lines

    def message(self, message: Message) -> EventLine | None:
        """The line for one session message (None: not an event of the log)."""
        if isinstance(message, messages.FeedStatus):
            return self._line(message.level, "feed", message.text)
        if isinstance(message, messages.SessionFailed):
            return self._line("error", "session", message.text)
        if isinstance(message, messages.SessionEnded):
            return self._line("info", "session", message.text)
        if isinstance(message, messages.SessionOpened):
            return self.session(message.view)
        return None

    def session(self, view: SessionView) -> EventLine | None:
        """The line saying which session the TUI draws (when it opened, or as it is now)."""
        return self._line(
            "info", "session", f"{view.mode} {view.market} {view.unit}m: {view.banner}"
        )

    def _live_line(self, live: Mapping[str, Any]) -> EventLine | None:
        if live.get("running"):
            threshold = live.get("threshold")
            text = (
                f"{live.get('mode')} session {live.get('market')} {live.get('unit')}m"
                + (
                    f" · {len(live['markets'])} markets"
                    if len(live.get("markets") or []) > 1
                    else ""
                )
                + (f" · threshold {threshold:.2f}" if threshold is not None else "")
            )
        elif live.get("ended"):
            text = f"session ended: {live['ended']}"
        else:
            text = "no live session"
        if text == self._live:
            return None  # a count moved, nothing the log says
        self._live = text
        return self._line("info", "server", text)

    def _job_line(self, frame: Mapping[str, Any]) -> EventLine | None:
        run, status = int(frame["run"]), str(frame.get("status"))
        if self._jobs.get(run) == status:
            return None  # progress: the Training screen draws it
        self._jobs[run] = status
        level = {"failed": "error", "cancelled": "warning", "interrupted": "warning"}
        note = f": {frame['message']}" if frame.get("message") else ""
        return self._line(level.get(status, "info"), "job", f"training run {run} {status}{note}")

    def _line(self, level: str, source: str, text: str) -> EventLine | None:
        moment = time.monotonic()
        said = self._said.get((level, text))
        self._said[(level, text)] = moment
        if len(self._said) > 256:  # forget the oldest half: only recent repeats matter
            for old in sorted(self._said, key=self._said.__getitem__)[:128]:
                del self._said[old]
        if said is not None and moment - said < REPEAT_S:
            return None
        return EventLine(self.now(), level if level in LEVELS else "info", source, text)


LEVELS = ("info", "warning", "error")


def _bearer(facade: Any) -> tuple[str, str] | None:
    """The server URL and token of an HttpWorkstation facade (None: not a server's client)."""
    url, token = getattr(facade, "url", None), getattr(facade, "token", None)
    if not isinstance(url, str) or not isinstance(token, str):
        return None
    return url, token


async def follow_events(facade: Any, on_frame: Callable[[dict[str, Any]], None]) -> None:
    """Call `on_frame` with each event of the Workstation behind `facade` (a status frame of
    its own when the stream falls behind or drops) until cancelled, or the server stops."""
    from engine.service.events import EventHub

    hub = getattr(facade, "events", None)  # HttpWorkstation has none (no such operation)
    if isinstance(hub, EventHub):
        await _follow_hub(hub, on_frame)
        return
    server = _bearer(facade)
    if server is not None:
        await _follow_socket(*server, on_frame)


def _deliver(raw: str, on_frame: Callable[[dict[str, Any]], None]) -> None:
    if not raw.startswith(CANDLE_PREFIX):  # a forming candle per market per tick: not logged
        on_frame(json.loads(raw))


async def _follow_hub(hub: Any, on_frame: Callable[[dict[str, Any]], None]) -> None:
    from engine.service.events import EventHub, Subscriber

    assert isinstance(hub, EventHub)
    on_frame({"type": "hello", "server": {}, "live": None})
    while True:
        listener: Subscriber = hub.subscribe()
        try:
            while (raw := await listener.get()) is not None:
                _deliver(raw, on_frame)
        finally:
            hub.unsubscribe(listener)
        if not listener.lagging:
            return  # the Workstation's events ended (its server stops)
        on_frame(_warning("the log fell behind the events: some are missing"))


async def _follow_socket(url: str, token: str, on_frame: Callable[[dict[str, Any]], None]) -> None:
    import aiohttp

    wait = BACKOFF_S[0]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            try:
                async with http.ws_connect(f"{url}/api/v1/events", heartbeat=20.0) as sock:
                    wait = BACKOFF_S[0]
                    async for frame in sock:
                        if frame.type != aiohttp.WSMsgType.TEXT:
                            break
                        _deliver(str(frame.data), on_frame)
                reason = "the server closed the stream"
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    on_frame(
                        {
                            "type": "status",
                            "level": "error",
                            "text": f"the server at {url} refused the events stream ({exc.status})",
                        }
                    )
                    return
                reason = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            on_frame(_warning(f"events of {url} dropped ({reason}); again in {wait:.1f}s"))
            await asyncio.sleep(wait)
            wait = min(wait * 2, BACKOFF_S[1])


def _warning(text: str) -> dict[str, Any]:
    return {"type": "status", "level": "warning", "text": text}
