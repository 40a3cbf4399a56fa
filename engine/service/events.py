"""The Workstation's events: one hub every face listens to (the server's `GET /api/v1/events`).

`EventHub.publish(event)` takes a contract dict (see `engine/server/events_routes.py` for the
frames) from any thread: on the event loop it is delivered at once, from another thread (a
training job's follower) it is handed to the loop with `call_soon_threadsafe`. Each listener
`subscribe()`s and gets a `Subscriber`, a bounded queue with one rule for a reader that
falls behind: a forming candle replaces the one still waiting for its market (the newest
price is all a chart needs), while closed candles, signals, status, live and job events are
never dropped; a subscriber whose queue holds more than its bound of those is marked
`lagging` and closed (the WebSocket answers 1013, the client reconnects and reloads).

`engine_event(event, market, unit)` is the one place an engine event (engine.live.engine)
becomes a contract dict; `job_event` is a training job's.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.live.engine import EngineEvent

BOUND = 4096  # events a subscriber may have waiting before it is closed as lagging
CANDLE_FIELDS = ("open", "high", "low", "close", "volume", "value")


def _iso(value: Any) -> str | None:
    """A timestamp as ISO-8601 UTC (None stays None)."""
    if value is None:
        return None
    import pandas as pd

    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()


def finite_or_null(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN: an unknown `value` is null)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def candle_fields(candle: Any) -> dict[str, Any]:
    """A candle (dict or row) as the contract's candle object: ts ISO, the numbers."""
    return {
        "ts": _iso(candle["ts"]),
        **{name: finite_or_null(candle.get(name)) for name in CANDLE_FIELDS},
    }


def engine_event(event: EngineEvent, market: str, unit: str) -> dict[str, Any]:
    """The contract dict of one live engine event (candle, signal or status)."""
    from engine.live.engine import CandleEvent, SignalEvent

    if isinstance(event, CandleEvent):
        return {
            "type": "candle",
            "market": market,
            "unit": unit,
            "closed": bool(event.closed),
            "candle": candle_fields(event.candle),
        }
    if isinstance(event, SignalEvent):
        signal = dict(vars(event.signal))
        signal["ts"] = _iso(signal["ts"])
        signal["confidence"] = finite_or_null(signal.get("confidence"))
        if signal.get("model_id") is not None:
            signal["model_id"] = int(signal["model_id"])
        probs = None if event.probs is None else [finite_or_null(p) for p in event.probs]
        return {"type": "signal", "market": market, "unit": unit, "signal": signal, "probs": probs}
    return {
        "type": "status",
        "text": event.text,
        "level": event.level,
        "connected": event.connected,
    }


def job_event(
    run: int, status: str, progress: float | None = None, message: str | None = None
) -> dict[str, Any]:
    """The contract dict of a training run's status or progress."""
    return {
        "type": "job",
        "run": int(run),
        "status": status,
        "progress": progress,
        "message": message,
    }


class Subscriber:
    """One listener's queue of JSON frames (see the module docstring). Filled and read on
    the hub's loop only."""

    def __init__(self, hub: EventHub, bound: int) -> None:
        self.hub, self.bound = hub, bound
        # [frame, forming key or None]; a replaced forming candle's frame is None
        self._items: deque[list[Any]] = deque()
        self._forming: dict[tuple[str, str], list[Any]] = {}
        self._kept = 0  # frames waiting that are never dropped
        self._ready = asyncio.Event()
        self.lagging = False
        self.closed = False
        self.coalesced = 0  # forming candles replaced before they were sent

    def put(self, frame: str, forming: tuple[str, str] | None) -> None:
        if self.closed:
            return
        if forming is not None:
            waiting = self._forming.pop(forming, None)
            if waiting is not None:  # the newer price replaces it, at the end of the line
                waiting[0] = None
                self.coalesced += 1
            entry: list[Any] = [frame, forming]
            self._forming[forming] = entry
            self._items.append(entry)
        else:
            if self._kept >= self.bound:
                self.lagging = True
                self.close()
                return
            self._kept += 1
            self._items.append([frame, None])
        self._ready.set()

    def close(self) -> None:
        """No more frames: the reader's `get` answers None once the queue is empty (at
        once when lagging)."""
        self.closed = True
        if self.lagging:
            self._items.clear()
            self._forming.clear()
        self._ready.set()

    def _take(self) -> str | None:
        while self._items:
            entry = self._items.popleft()
            frame, key = entry
            if frame is None:
                continue
            if key is None:
                self._kept -= 1
            elif self._forming.get(key) is entry:
                del self._forming[key]
            return str(frame)
        return None

    def pending(self) -> int:
        return sum(1 for entry in self._items if entry[0] is not None)

    async def get(self) -> str | None:
        """The next frame, waiting for one; None once closed (lagging: see `lagging`)."""
        while True:
            frame = None if self.lagging else self._take()
            if frame is not None:
                return frame
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()


class EventHub:
    """Where the Workstation's events go out to every subscriber (see the module docstring)."""

    def __init__(self, bound: int = BOUND) -> None:
        self.bound = bound
        self.loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on `loop` from now on (the server's)."""
        self.loop = loop

    def subscribe(self, bound: int | None = None) -> Subscriber:
        """A new listener's queue; call from the loop (a coroutine): the hub delivers there."""
        loop = asyncio.get_running_loop()
        if self.loop is None or self.loop.is_closed():
            self.loop = loop
        subscriber = Subscriber(self, self.bound if bound is None else bound)
        with self._lock:
            self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.close()
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        """Send `event` (a contract dict) to every subscriber; from any thread."""
        with self._lock:
            if not self._subscribers:
                return
        frame = json.dumps(event, separators=(",", ":"))
        forming = None
        if event.get("type") == "candle" and not event.get("closed"):
            forming = (str(event.get("market")), str(event.get("unit")))
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(frame, forming)
        else:
            try:
                loop.call_soon_threadsafe(self._deliver, frame, forming)
            except RuntimeError:  # the loop closed meanwhile: nobody listens any more
                pass

    def _deliver(self, frame: str, forming: tuple[str, str] | None) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.put(frame, forming)
            if subscriber.lagging:
                self.unsubscribe(subscriber)

    def close_all(self) -> None:
        """Close every subscriber (the server stops); call on the loop."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.close()
