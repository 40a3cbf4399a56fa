"""SignalLog: a table of the engine's signals, following the newest."""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from engine.trading.strategies import Signal


class SignalLog(DataTable[str | Text]):
    """The last `MAX_ROWS` signals, oldest first, following the newest like `tail -f`.

    Rows are appended one at a time (a DataTable cannot insert at the top, and rebuilding
    500 rows per signal stalls a fast replay); hold signals can be hidden with `show_holds`.
    """

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
        self._keys: deque[RowKey] = deque()

    def on_mount(self) -> None:
        self.add_column("time", key="time")
        self.add_column("action", key="action")
        self.add_column("conf", key="conf")
        self.add_column("source", key="source")
        self.add_column("reason", key="reason")

    def add_signal(self, signal: Signal) -> None:
        self._signals.append(signal)
        if self.show_holds or signal.action != "hold":
            self._append(signal)

    @property
    def signals(self) -> list[Signal]:
        """The signals the table shows, oldest first."""
        return [s for s in self._signals if self.show_holds or s.action != "hold"]

    def watch_show_holds(self) -> None:
        self.clear()
        self._keys.clear()
        for signal in self.signals:
            self._append(signal)

    def _append(self, signal: Signal) -> None:
        following = self.cursor_row >= self.row_count - 1  # the user has not scrolled back
        style = self.get_component_rich_style(f"signal-log--{signal.action}")
        self._keys.append(
            self.add_row(
                signal.ts.strftime("%H:%M"),
                Text(signal.action, style=style),
                f"{signal.confidence:.2f}",
                Text(signal.source),  # Text: a model name or reason may hold [brackets]
                Text(signal.reason),
            )
        )
        while len(self._keys) > self.MAX_ROWS:
            self.remove_row(self._keys.popleft())
        if following:
            self.move_cursor(row=self.row_count - 1, animate=False)
