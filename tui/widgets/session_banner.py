"""SessionBanner: where the data comes from (live, replay or demo), always in view."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

LEVELS = ("starting", "live", "warning", "error")


class SessionBanner(Static):
    """One line (wrapping) at the top; the CSS class `-<level>` picks its colours."""

    text: reactive[str] = reactive("")
    level: reactive[str] = reactive("starting")

    def show(self, text: str, level: str) -> None:
        self.text, self.level = text, level

    def watch_text(self, text: str) -> None:
        self.update(Content(text))  # plain text: engine messages may hold [brackets]

    def watch_level(self, level: str) -> None:
        for name in LEVELS:
            self.set_class(name == level, f"-{name}")
