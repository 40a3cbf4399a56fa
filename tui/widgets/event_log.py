"""EventLog: the server and feed events (tui/eventlog.py's lines), newest at the bottom, each
with its time (KST unless `utc`), source and text coloured by level."""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import RichLog

from tui.eventlog import EventLine
from tui.fmt import fmt_time


class EventLog(RichLog):
    """The newest `MAX_LINES` event lines (see the module docstring)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "event-log--time",
        "event-log--info",
        "event-log--warning",
        "event-log--error",
    }
    DEFAULT_CSS = """
    EventLog > .event-log--time { color: $text-muted; }
    EventLog > .event-log--info { color: $text; }
    EventLog > .event-log--warning { color: $warning; }
    EventLog > .event-log--error { color: $error; text-style: bold; }
    """

    MAX_LINES = 1000

    utc: reactive[bool] = reactive(False)

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(
            max_lines=self.MAX_LINES, wrap=True, markup=False, name=name, id=id, classes=classes
        )
        self.kept: deque[EventLine] = deque(maxlen=self.MAX_LINES)

    def on_mount(self) -> None:
        self.set_reactive(EventLog.utc, bool(getattr(self.app, "utc", False)))

    def add(self, line: EventLine) -> None:
        self.kept.append(line)
        self.write(self._event_text(line))

    def watch_utc(self) -> None:
        self.clear()
        for line in self.kept:
            self.write(self._event_text(line))

    def _event_text(self, line: EventLine) -> Text:
        level = line.level if line.level != "info" else ""
        return Text.assemble(
            (
                fmt_time(line.ts, utc=self.utc, fmt="%m-%d %H:%M:%S"),
                self.get_component_rich_style("event-log--time"),
            ),
            " ",
            (f"{line.source:<7} ", "bold"),
            (
                f"{level}: {line.text}" if level else line.text,
                self.get_component_rich_style(f"event-log--{line.level}"),
            ),
        )
