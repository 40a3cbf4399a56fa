"""HelpScreen: every key binding of the screen below it, generated from the bindings."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

LEGEND = (
    "Chart: █ candle body, │ wick, green up, red down; ▲ buy and ▼ sell signals.\n"
    "Prediction: sell/hold/buy probabilities of the latest closed candle. A buy or sell acts"
    " only when its probability reaches the threshold (│ on its bar);"
    " otherwise the signal is hold."
)


def binding_rows(screen: Screen[object]) -> list[tuple[str, str]]:
    """(keys, description) for each action bound on `screen`, its focused widget and the app:
    the footer's keys first, then the screen's, the app's and the focused widget's others."""
    app = screen.app
    grouped: dict[tuple[str, str], list[tuple[bool, str]]] = {}
    rank: dict[tuple[str, str], int] = {}
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if not binding.description:
            continue
        ident = (binding.action, binding.description)
        display = app.get_key_display(replace(binding, key=key, key_display=None))
        if (not binding.show, display) not in grouped.setdefault(ident, []):
            grouped[ident].append((not binding.show, display))
        where = 0 if active.node is screen else 1 if active.node is app else 2
        rank[ident] = min(rank.get(ident, 9), (0 if binding.show else 3) + where)
    order = sorted(grouped, key=lambda ident: rank[ident])
    return [
        (" ".join(d for _, d in sorted(grouped[ident], key=lambda k: k[0])), ident[1])
        for ident in order
    ]


class HelpScreen(ModalScreen[None]):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"help-screen--key"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "dismiss", "Close", key_display="esc")
    ]

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(id="help-keys")
            yield Static(LEGEND, id="help-legend", markup=False)
            yield Static("esc or ? closes this help", id="help-close")

    def on_mount(self) -> None:
        self.query_one("#help").border_title = "upquant · keys"
        table = Table.grid(padding=(0, 2))
        table.add_column(style=self.get_component_rich_style("help-screen--key"), no_wrap=True)
        table.add_column()
        for keys, description in self.rows:
            table.add_row(keys, description)
        self.query_one("#help-keys", Static).update(table)
