"""StatusLine: the latest engine or session status (stream drops, replay end, errors)."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

LEVELS = ("info", "warning", "error")


class StatusLine(Static):
    """One line above the footer; the CSS class `-<level>` picks its colours."""

    text: reactive[str] = reactive("")
    level: reactive[str] = reactive("info")

    def show(self, text: str, level: str = "info") -> None:
        self.text, self.level = text, level

    def watch_text(self, text: str) -> None:
        self.update(Content(text))  # plain text: engine messages may hold [brackets]

    def watch_level(self, level: str) -> None:
        for name in LEVELS:
            self.set_class(name == level, f"-{name}")
