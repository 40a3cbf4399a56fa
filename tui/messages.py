"""The workstation's messages, one class per event, and the one boundary where engine events
become messages: `from_engine` for an engine in this process, `from_wire` beside it for the
same events as the server's events stream carries them (a TUI attached to a server).

The engine knows nothing of Textual: it calls its subscribers with plain events
(engine/live/engine.py). The session's view (tui/views.py, tui/remote.py) turns each into
one of these and posts it to the main screen, in the order things happen, so the screen
never races the engine. Forming-candle
updates arrive many times a second on a live feed; an update still waiting in the queue is
replaced by the next one of the same market (`can_replace`): the chart only ever draws the
newest forming bar. A session may watch many markets: candles and signals carry theirs, and
each screen draws the ones it shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    import pandas as pd

    from engine.live.engine import EngineEvent
    from engine.trading.strategies import Signal
    from tui.views import SessionView


class SessionOpened(Message, bubble=False):
    """The session is built (or, attached, found again after a reconnect); `history` is its
    window before the first event."""

    def __init__(self, view: SessionView, history: pd.DataFrame) -> None:
        super().__init__()
        self.view, self.history = view, history


class SessionFailed(Message, bubble=False):
    """The session could not open, its feed broke, or its last candles could not be stored."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ClockChanged(Message, bubble=False):
    """The user switched the times shown between KST and UTC (`app.utc`)."""

    def __init__(self, utc: bool) -> None:
        super().__init__()
        self.utc = utc


class SessionEnded(Message, bubble=False):
    """A replay played its last candle (a live session never ends by itself)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ThresholdChanged(Message, bubble=False):
    """The session's threshold moved (by this TUI or, attached, by another client)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold


class FormingCandle(Message, bubble=False):
    """The latest values of the candle still forming; a newer one replaces it in the queue."""

    def __init__(self, candle: Mapping[str, Any]) -> None:
        super().__init__()
        self.candle = candle

    def can_replace(self, message: Message) -> bool:
        # Textual asks the queued message whether the next one may take its place: the chart
        # keeps only the newest forming bar of a market, so an older update drawn first is
        # wasted work (another market's update is not: a session may watch many)
        return isinstance(message, FormingCandle) and message.candle.get(
            "market"
        ) == self.candle.get("market")


class CandleClosed(Message, bubble=False):
    """A candle closed (its bucket is over); signals are computed on closed candles only."""

    def __init__(self, candle: Mapping[str, Any]) -> None:
        super().__init__()
        self.candle = candle


class SignalReceived(Message, bubble=False):
    """The engine's signal for a closed candle, with the class probabilities when a model
    made it (None for a rule)."""

    def __init__(self, signal: Signal, probs: np.ndarray | None) -> None:
        super().__init__()
        self.signal, self.probs = signal, probs


class FeedStatus(Message, bubble=False):
    """Something the feed says: `level` info, warning or error; `connected` the live socket's
    state when the status is about it (None otherwise)."""

    def __init__(self, text: str, level: str = "info", connected: bool | None = None) -> None:
        super().__init__()
        self.text, self.level, self.connected = text, level, connected


def from_engine(event: EngineEvent) -> Message:
    """The message for one engine event."""
    from engine.live.engine import CandleEvent, SignalEvent

    if isinstance(event, CandleEvent):
        return CandleClosed(event.candle) if event.closed else FormingCandle(event.candle)
    if isinstance(event, SignalEvent):
        return SignalReceived(event.signal, event.probs)
    return FeedStatus(event.text, event.level, event.connected)


def from_wire(frame: Mapping[str, Any]) -> Message | None:
    """The message for one frame of the server's events stream (`GET /api/v1/events`), the
    same one `from_engine` makes of the engine event it was; None for a frame that is not an
    engine event (hello, live, job: the remote session reads those itself)."""
    import numpy as np
    import pandas as pd

    from engine.trading.strategies import Signal

    kind = frame.get("type")
    if kind == "candle":
        candle = dict(frame["candle"])
        candle["ts"] = pd.Timestamp(candle["ts"])
        candle.setdefault("market", frame.get("market"))
        candle.setdefault("unit", frame.get("unit"))
        return CandleClosed(candle) if frame["closed"] else FormingCandle(candle)
    if kind == "signal":
        fields = frame["signal"]
        signal = Signal(
            pd.Timestamp(fields["ts"]),
            str(fields["market"]),
            str(fields["action"]),
            float(fields["confidence"]),
            str(fields["source"]),
            str(fields["reason"]),
            fields.get("model_id"),
        )
        probs = frame.get("probs")
        return SignalReceived(signal, None if probs is None else np.asarray(probs, dtype=float))
    if kind == "status":
        return FeedStatus(
            str(frame["text"]), str(frame.get("level", "info")), frame.get("connected")
        )
    return None
