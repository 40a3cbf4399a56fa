"""What the main screen reads from a session, whoever runs it (`SessionView`), and the
in-process session seen through it (`LocalView`).

A session runs in this process (the TUI opened it: `LocalView`; or the server this TUI hosts
runs it and the TUI draws the same engine: `HostedView`), or in another process's server (tui/remote.py
RemoteSession, fed by the events WebSocket). The screen does not care which: it reads the
mode, banner, model or rule and threshold from the view, moves the threshold through it, and
draws the messages `follow` posts.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Protocol

from tui import messages

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    from textual.message import Message

    from engine.live.engine import EngineEvent, LiveEngine
    from engine.live.session import Session
    from engine.service import Workstation


def _poster(post: Callable[[Message], object]) -> Callable[[EngineEvent], None]:
    """An engine listener posting each event as its message."""

    def listen(event: EngineEvent) -> None:
        post(messages.from_engine(event))

    return listen


class SessionView(Protocol):
    """A session as the screen sees it."""

    @property
    def market(self) -> str: ...

    @property
    def unit(self) -> str: ...

    @property
    def mode(self) -> str:
        """live, replay or demo."""
        ...

    @property
    def banner(self) -> str:
        """What the user must know about where the data comes from."""
        ...

    @property
    def model_ref(self) -> str | None:
        """The model that decides (name@version), None when the rule does."""
        ...

    @property
    def rule(self) -> str:
        """The rule strategy's name (it decides without a model, or when the model fails)."""
        ...

    @property
    def no_model_reason(self) -> str | None:
        """Why no model decides (None when one does)."""
        ...

    @property
    def threshold(self) -> float:
        """The confidence threshold model signals are held to."""
        ...

    def set_threshold(self, value: float, market: str | None = None) -> float:
        """Move the threshold of `market`'s lane (every lane's when None), clamped to its
        range; the value it now has."""
        ...

    @property
    def markets(self) -> list[str]:
        """Every market the session watches (its lanes), the first one first."""
        ...

    def unit_of(self, market: str) -> str | None:
        """The unit `market`'s lane decides on (a watchlist's markets may each have their
        own), None when the session does not watch it."""
        ...

    def threshold_of(self, market: str) -> float:
        """The threshold of `market`'s lane (the session's when it does not watch it)."""
        ...

    def model_of(self, market: str) -> str | None:
        """The model deciding `market` (name@version), None when the rule does."""
        ...

    async def window(self, market: str) -> pd.DataFrame | None:
        """The candles of `market`'s lane window (oldest first), None when not watched."""
        ...

    async def follow(self, post: Callable[[Message], object]) -> None:
        """Post `SessionOpened` with the window, then every event of every lane as its
        message (candles and signals carry their market), until the session's feed ends (a
        replay played its last candle); raise when the feed fails."""
        ...


class LocalView:
    """A session in this process: its engine is read directly. `owns_feed`: the TUI opened
    the session and drives its feed (and flushes it when the feed ends or the TUI quits);
    otherwise the server this TUI hosts drives it and the view only watches."""

    def __init__(self, session: Session, *, owns_feed: bool = True) -> None:
        self.session, self.engine, self.owns_feed = session, session.engine, owns_feed

    @property
    def market(self) -> str:
        return self.engine.market

    @property
    def unit(self) -> str:
        return self.engine.unit

    @property
    def mode(self) -> str:
        return self.session.mode

    @property
    def banner(self) -> str:
        return self.session.banner

    @property
    def model_ref(self) -> str | None:
        return self.engine.model.record.ref if self.engine.model is not None else None

    @property
    def rule(self) -> str:
        return self.engine.rule_name

    @property
    def no_model_reason(self) -> str | None:
        return None if self.engine.model is not None else self.engine.no_model_reason

    @property
    def threshold(self) -> float:
        return self.engine.threshold

    @property
    def lanes(self) -> dict[str, LiveEngine]:
        markets = self.session.markets
        return dict(markets.lanes) if markets is not None else {self.engine.market: self.engine}

    @property
    def markets(self) -> list[str]:
        return list(self.lanes)

    def unit_of(self, market: str) -> str | None:
        lane = self.lanes.get(market)
        return None if lane is None else lane.unit

    def threshold_of(self, market: str) -> float:
        return self.lanes.get(market, self.engine).threshold

    def model_of(self, market: str) -> str | None:
        lane = self.lanes.get(market)
        return lane.model.record.ref if lane is not None and lane.model is not None else None

    async def window(self, market: str) -> pd.DataFrame | None:
        lane = self.lanes.get(market)
        return None if lane is None else lane.history.copy()

    def set_threshold(self, value: float, market: str | None = None) -> float:
        lanes = self.lanes
        target = lanes.get(market or "", self.engine)  # not watched: the session's first
        for lane in lanes.values() if market is None else [target]:
            lane.set_threshold(value)
        return target.threshold

    def _subscribe(self, post: Callable[[Message], object]) -> None:
        """Every lane's events (and lanes added later) posted as messages."""
        markets = self.session.markets
        if markets is not None:
            markets.subscribe(_poster(post))
        else:
            self.engine.subscribe(_poster(post))

    async def follow(self, post: Callable[[Message], object]) -> None:
        engine = self.engine
        # the snapshot of the window and the subscription happen before the feed moves on,
        # so the screen sees every candle exactly once
        post(messages.SessionOpened(self, engine.history.copy()))
        # subscribed for the view's life: a status published after the feed ended is shown too
        self._subscribe(post)
        if not self.owns_feed:
            await asyncio.Event().wait()  # the server's feed: watched until the TUI quits
            return
        try:
            result = await self.session.runner
        finally:
            self._flush(post)
        if self.mode != "live":
            source = " (demo market)" if self.mode == "demo" else ""
            post(messages.SessionEnded(f"replay finished: {result} candles{source}"))

    def _flush(self, post: Callable[[Message], object]) -> None:
        """Store signals still buffered when the feed ends or the app quits."""
        try:
            self.engine.flush()
        except Exception as exc:  # noqa: BLE001 - shown, not raised, during shutdown
            post(
                messages.SessionFailed(
                    f"could not store the last candles: {type(exc).__name__}: {exc}"
                )
            )


class HostedView(LocalView):
    """The session the server this TUI hosts runs (`ws.live_session`): drawn from its engine
    directly, the threshold moved through the facade (so other clients hear of it), and
    what other clients change (threshold, a stop, a new session) heard on the Workstation's
    event hub, like any client of the server."""

    def __init__(self, ws: Workstation) -> None:
        session = ws.live_session
        if session is None:
            raise RuntimeError("the hosted server runs no live session")
        super().__init__(session, owns_feed=False)
        self.ws = ws

    def set_threshold(self, value: float, market: str | None = None) -> float:
        from engine.params import THRESHOLD_MAX, THRESHOLD_MIN
        from engine.service.live import LiveThresholdRequest

        value = round(min(THRESHOLD_MAX, max(THRESHOLD_MIN, value)), 2)
        if market is not None and market not in self.lanes:
            market = None
        self.ws.live_threshold(LiveThresholdRequest(threshold=value, market=market))
        return self.threshold_of(market) if market is not None else self.engine.threshold

    async def follow(self, post: Callable[[Message], object]) -> None:
        hub = self.ws.events
        listener = hub.subscribe()  # first: no change after the window below is missed
        try:
            self._open(post)
            while (frame := await listener.get()) is not None:
                event = json.loads(frame)
                if event.get("type") == "live":
                    self._live(post, event.get("live") or {})
        finally:
            hub.unsubscribe(listener)

    def _open(self, post: Callable[[Message], object]) -> None:
        post(messages.SessionOpened(self, self.engine.history.copy()))
        self._subscribe(post)

    def _live(self, post: Callable[[Message], object], live: dict[str, Any]) -> None:
        session = self.ws.live_session
        if live.get("running") and session is not None and session is not self.session:
            self.session, self.engine = session, session.engine  # another client started it
            self._open(post)
        elif not live.get("running"):
            post(messages.SessionEnded(f"the session ended: {live.get('ended') or 'stopped'}"))
        elif live.get("threshold") is not None:
            post(messages.ThresholdChanged(float(live["threshold"])))
