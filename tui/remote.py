"""A TUI attached to a running server: the server's live session seen through the API.

`attach(url, token, market, unit, ...)` asks the server for its session (`live_status`) and
starts one (`live_start`) when none runs; the `RemoteSession` it answers is a `SessionView`
(tui/views.py) the main screen draws like a session in process. A lane's window comes from
`live_history` (its `market`), its events from the events WebSocket (`GET /api/v1/events`,
bearer token as for every route): every watched market's frames, each turned into the
screen's message by `messages.from_wire` (the chart draws its market's); the threshold keys
call `live_threshold` for the shown market, and a threshold moved by another client reaches
the screen through the stream's `live` frames. When the socket drops, the status line says
DISCONNECTED and the session reconnects with backoff (0.5 s doubling up to 10 s), to where
server.json then says the server answers (a restart on another port), reloading the window
once back, so nothing closed while it was away is missing from the chart.
Quitting leaves the server and its session running.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pandas as pd

from engine.params import THRESHOLD_MAX, THRESHOLD_MIN
from store.candles import CANDLE_COLUMNS
from tui import messages
from tui.client import RemoteError, ServerUnreachable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from textual.message import Message

BACKOFF_S = (0.5, 10.0)  # first wait before a reconnect, and the longest
HISTORY = 1000  # candles of the server's window the chart loads (it shows fewer)
OP_TIMEOUT_S = 60.0
OPEN_TIMEOUT_S = 300.0  # how long a session another client opens may take (the server's own)


class RemoteSession:
    """The server's live session as a SessionView (see the module docstring)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        token: str,
        status: Mapping[str, Any],
        *,
        note: str | None = None,
    ) -> None:
        self.http, self.url, self.note = http, url.rstrip("/"), note
        self._token = token
        self.status: dict[str, Any] = dict(status)
        self._post: Callable[[Message], object] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._streamed = False  # whether the current connection got as far as its hello

    # --- what the screen reads ----------------------------------------------------------

    @property
    def market(self) -> str:
        return str(self.status["market"])

    @property
    def unit(self) -> str:
        return str(self.status["unit"])

    @property
    def mode(self) -> str:
        return str(self.status.get("mode") or "live")

    @property
    def banner(self) -> str:
        return f"{self.status.get('banner') or ''} · server {self.url}"

    @property
    def model_ref(self) -> str | None:
        return self.status.get("model_ref")

    @property
    def rule(self) -> str:
        return str(self.status.get("rule") or "")

    @property
    def no_model_reason(self) -> str | None:
        return self.status.get("no_model_reason")

    @property
    def threshold(self) -> float:
        return float(self.status["threshold"])

    @property
    def markets(self) -> list[str]:
        watched = [str(m["market"]) for m in self.status.get("markets") or [] if m.get("market")]
        return watched or [self.market]

    def _watched(self, market: str) -> dict[str, Any] | None:
        return next(
            (m for m in self.status.get("markets") or [] if m.get("market") == market), None
        )

    def unit_of(self, market: str) -> str | None:
        watched = self._watched(market)
        if watched is not None:
            return str(watched.get("unit") or self.unit)
        return self.unit if market == self.market else None

    def threshold_of(self, market: str) -> float:
        watched = self._watched(market)
        if watched is not None and watched.get("threshold") is not None:
            return float(watched["threshold"])
        return self.threshold

    def model_of(self, market: str) -> str | None:
        if market == self.market:
            return self.model_ref
        watched = self._watched(market)
        return None if watched is None else watched.get("model")

    async def window(self, market: str) -> pd.DataFrame | None:
        if market not in self.markets:
            return None
        return await self._history(market)

    def set_threshold(self, value: float, market: str | None = None) -> float:
        """Ask the server to move the threshold (of `market`'s lane, or every lane's); the
        clamped value at once (the screen stays responsive), the server's answer when it
        comes."""
        value = round(min(THRESHOLD_MAX, max(THRESHOLD_MIN, value)), 2)
        if market is not None and market not in self.markets:
            market = None
        if market is None or market == self.market:
            self.status["threshold"] = value
        for watched in self.status.get("markets") or []:
            if market is None or watched.get("market") == market:
                watched["threshold"] = value
        task = asyncio.get_running_loop().create_task(self._send_threshold(value, market))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return value

    async def _send_threshold(self, value: float, market: str | None = None) -> None:
        body: dict[str, Any] = {"threshold": value}
        if market is not None:
            body["market"] = market
        try:
            status = await self.op("live_threshold", body)
        except RemoteError as exc:
            self._say(messages.FeedStatus(f"threshold not changed: {exc}", "error"))
            return
        self._live(status)

    # --- following the server's stream --------------------------------------------------

    async def follow(self, post: Callable[[Message], object]) -> None:
        """Post the window and every event of the server's session until the TUI quits,
        reconnecting whenever the socket drops; a refused token raises."""
        self._post = post
        wait = BACKOFF_S[0]
        reconnect = False
        try:
            while True:
                self._streamed = False
                try:
                    await self._stream(post, reconnect)
                    reason = "the server closed the stream"
                except (aiohttp.ClientError, OSError, TimeoutError, RemoteError) as exc:
                    refused = _refusal(self.url, exc)
                    if refused is not None:
                        raise refused from None
                    reason = str(exc) or type(exc).__name__
                if self._streamed:  # it was connected: the next drop starts the backoff over
                    wait = BACKOFF_S[0]
                was, delay = self.url, wait
                if await self._relocate():
                    reason += f"; it now answers at {self.url}"
                    delay = 0.0
                post(
                    messages.FeedStatus(
                        f"DISCONNECTED from the server at {was} ({reason});"
                        f" reconnecting in {delay:.1f}s",
                        "warning",
                        connected=False,
                    )
                )
                await asyncio.sleep(delay)
                wait = min(wait * 2, BACKOFF_S[1])
                reconnect = True
        finally:
            await self.close()

    async def _relocate(self) -> bool:
        """Follow the server to where server.json now says it answers (restarted on another
        port, or with a new token); True when it moved."""
        from engine.server.lifecycle import read_token, running_server

        info = running_server()
        token = read_token()
        if info is None or token is None or (info.url, token) == (self.url, self._token):
            return False
        await self.http.close()
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
        self.url, self._token = info.url.rstrip("/"), token
        return True

    async def _stream(self, post: Callable[[Message], object], reconnect: bool) -> None:
        events = f"{self.url}/api/v1/events"
        async with self.http.ws_connect(events, heartbeat=20.0) as sock:
            hello = await sock.receive_json(timeout=OP_TIMEOUT_S)
            if hello.get("type") != "hello":
                raise RemoteError(f"the server's events stream began with {hello!r}")
            self._streamed = True
            live = hello.get("live")
            if live and live.get("running"):
                await self._open(post, live)
            if reconnect:
                post(
                    messages.FeedStatus(
                        f"reconnected to the server at {self.url}", "info", connected=True
                    )
                )
            elif self.note:
                post(messages.FeedStatus(self.note, "warning"))
            if not (live and live.get("running")):
                self.status["running"] = False
                ended = (live or {}).get("ended")
                last = f" (its last one ended: {ended})" if ended else ""
                post(messages.SessionEnded(f"the server at {self.url} runs no session{last}"))
            async for frame in sock:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break  # closed (1013 when this client fell behind) or an error
                self._on_frame(post, json.loads(frame.data))

    async def _open(self, post: Callable[[Message], object], live: Mapping[str, Any]) -> None:
        """Take the session's status, load its window, draw it from the start."""
        self.status = dict(live)
        post(messages.SessionOpened(self, await self._history(None)))

    async def _history(self, market: str | None) -> pd.DataFrame:
        """The newest candles of a lane's window (the first market's when None)."""
        body: dict[str, Any] = {"last": HISTORY}
        if market is not None:
            body["market"] = market
        answer = await self.op("live_history", body)
        rows = answer.get("candles", answer) if isinstance(answer, dict) else answer
        history = pd.DataFrame(list(rows or []), columns=CANDLE_COLUMNS)
        history["ts"] = pd.to_datetime(history["ts"], utc=True)
        return history

    def _on_frame(self, post: Callable[[Message], object], frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "live":
            self._live(frame.get("live"))
            return
        # every market's frames are posted (they say which market and unit): a screen
        # draws the ones it shows
        message = messages.from_wire(frame)
        if message is not None:
            post(message)

    def _live(self, live: Mapping[str, Any] | None) -> None:
        """A `live` frame (or an answer of a live operation): the session's new status."""
        if not live or not live.get("running"):
            if self.status.get("running", True):
                self.status["running"] = False
                ended = (live or {}).get("ended") or "stopped"
                self._say(messages.SessionEnded(f"the server's session ended: {ended}"))
            return
        if live.get("started") != self.status.get("started") and self._post is not None:
            # a new session on the server: load its window as if attaching again
            task = asyncio.get_running_loop().create_task(self._open(self._post, live))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        self.status = dict(live)
        self._say(messages.ThresholdChanged(self.threshold))

    def _say(self, message: Message) -> None:
        if self._post is not None:
            self._post(message)

    # --- the operations -----------------------------------------------------------------

    async def op(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await call(self.http, self.url, name, body)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await self.http.close()


def _refusal(url: str, exc: BaseException) -> RemoteError | None:
    """The failure that reconnecting cannot mend (a refused token, a server without the
    events stream, an operation refused), or None for a dropped or unreachable server."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        if exc.status in (401, 403):
            return RemoteError(
                f"the server at {url} refused the token ({exc.status})",
                "restart the TUI; the server rewrites the local token file on start",
                exc.status,
            )
        if exc.status == 404:
            return RemoteError(
                f"the server at {url} has no events stream (/api/v1/events)",
                "upgrade and restart `upquant serve`, or stop it to let the TUI host its own",
                404,
            )
        return None
    if isinstance(exc, RemoteError) and not isinstance(exc, ServerUnreachable):
        return exc
    return None


async def call(
    http: aiohttp.ClientSession,
    url: str,
    name: str,
    body: Mapping[str, Any],
    timeout: float = OP_TIMEOUT_S,
) -> dict[str, Any]:
    """POST /api/v1/ops/{name}: the answer, or RemoteError with the server's error and hint."""
    try:
        async with http.post(
            f"{url}/api/v1/ops/{name}",
            json=dict(body),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as answer:
            text = await answer.text()
            status = answer.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ServerUnreachable(
            f"the upquant server at {url} is not answering ({exc or type(exc).__name__})",
            "check it with `upquant server status`",
        ) from None
    try:
        data = json.loads(text)
    except ValueError:
        raise RemoteError(
            f"the server at {url} answered {status}: {text[:200]}", None, status
        ) from None
    if status != 200:
        error = data.get("error") if isinstance(data, dict) else None
        hint = data.get("hint") if isinstance(data, dict) else None
        raise RemoteError(str(error or f"{name} answered {status}"), hint, status)
    return data


async def _opened(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The status of the session another client (or the server itself, `serve --market`)
    is opening: asked again until it runs (opening may backfill Upbit candles)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_TIMEOUT_S
    while True:
        status = await call(http, url, "live_status", {})
        if status.get("running") or status.get("ended") or loop.time() > deadline:
            return status
        await asyncio.sleep(0.2)


async def attach(
    url: str,
    token: str,
    market: str,
    unit: str,
    *,
    threshold: float | None = 0.5,
    offline: bool = False,
    replay_delay: float = 0.25,
    replay_candles: int = 2000,
    watch: dict[str, Any] | None = None,
) -> RemoteSession:
    """The server's session, started with these options when none runs (a running one is
    shown as it is, with a note when it is not the market or unit asked for). `watch` adds
    the live_start fields of a watchlist (markets, all_krw, strategy_spec)."""
    url = url.rstrip("/")
    http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    try:
        status = await call(http, url, "live_status", {})
        note = None
        if not status.get("running"):
            start = {
                "market": market,
                "unit": unit,
                "threshold": threshold,
                "offline": offline,
                "replay_delay": replay_delay,
                "replay_candles": replay_candles,
                **{k: v for k, v in (watch or {}).items() if v},
            }
            try:
                status = await call(http, url, "live_start", start, OPEN_TIMEOUT_S)
            except RemoteError as exc:
                if exc.status != 409:  # 409: one runs, or is being opened, meanwhile
                    raise
                status = await _opened(http, url)
        if (status.get("market"), status.get("unit")) != (market, unit):
            note = (
                f"the server runs {status.get('market')} {status.get('unit')}m, not"
                f" {market} {unit}m: showing its session (one session per server for now)"
            )
        return RemoteSession(http, url, token, status, note=note)
    except BaseException:
        await http.close()
        raise
