"""SignalLog: a table of the engine's signals, newest on top."""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable

from engine.strategy import Signal


class SignalLog(DataTable[str | Text]):
    """The last `MAX_ROWS` signals; hold signals can be hidden with `show_holds`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = DataTable.COMPONENT_CLASSES | {
        "signal-log--buy",
        "signal-log--sell",
        "signal-log--hold",
    }

    MAX_ROWS = 500

    show_holds: reactive[bool] = reactive(True)

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._signals: deque[Signal] = deque(maxlen=self.MAX_ROWS)
        self._rebuild_pending = False

    def on_mount(self) -> None:
        self.add_column("time", key="time")
        self.add_column("action", key="action")
        self.add_column("conf", key="conf")
        self.add_column("source", key="source")
        self.add_column("reason", key="reason")

    def add_signal(self, signal: Signal) -> None:
        self._signals.append(signal)
        self._schedule_rebuild()

    @property
    def signals(self) -> list[Signal]:
        """The signals the table shows, newest first."""
        return [s for s in reversed(self._signals) if self.show_holds or s.action != "hold"]

    def watch_show_holds(self) -> None:
        self._schedule_rebuild()

    def _schedule_rebuild(self) -> None:
        # DataTable cannot insert at the top: rebuild once per burst of signals, not per signal
        if not self._rebuild_pending:
            self._rebuild_pending = True
            self.call_later(self._rebuild)

    def _rebuild(self) -> None:
        self._rebuild_pending = False
        self.clear()
        styles = {
            a: self.get_component_rich_style(f"signal-log--{a}") for a in ("buy", "sell", "hold")
        }
        self.add_rows(
            (
                s.ts.strftime("%H:%M"),
                Text(s.action, style=styles[s.action]),
                f"{s.confidence:.2f}",
                s.source,
                s.reason,
            )
            for s in self.signals
        )
