"""HelpScreen: the keys of the screen below it (generated from its bindings), the screens'
number keys and the keys that work everywhere; it scrolls when the terminal is short."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from tui.screens.registry import ENTRIES

LEGEND = (
    "Chart: █ candle body, │ wick, green up, red down; ▲ buy and ▼ sell signals.\n"
    "Prediction: sell/hold/buy probabilities of the latest closed candle. A buy or sell acts"
    " only when its probability reaches the threshold (│ on its bar);"
    " otherwise the signal is hold."
)
PALETTE = "Command palette: every screen and action"
FIELDS = ("tab shift+tab", "Next / previous field")

Section = tuple[str, list[tuple[str, str]]]  # a title, its (keys, description) rows


def textual_actions(cls: type) -> set[str]:
    """The actions Textual's own classes among `cls`'s bases bind (cursor, focus, copy)."""
    return {
        binding.action
        for base in cls.__mro__
        if base.__module__.startswith("textual.")
        for binding in getattr(base, "BINDINGS", ())
        if isinstance(binding, Binding)
    }


def binding_rows(screen: Screen[Any]) -> list[tuple[str, str]]:
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


def help_sections(screen: Screen[Any], title: str) -> list[Section]:
    """The help of `screen` (called `title`): its own keys and its widgets' (Textual's cursor,
    focus and copy keys left out), the screens' number keys, the keys that work everywhere;
    the footer's keys first within each."""
    app = screen.app
    found: dict[str, dict[tuple[str, str], list[str]]] = {"own": {}, "app": {}}
    shown: dict[tuple[str, str], bool] = {}
    for key, active in screen.active_bindings.items():
        binding, node = active.binding, active.node
        if not binding.description or binding.action.startswith("show("):
            continue  # undescribed, or a screen's number key (the screens' section)
        if binding.action in textual_actions(type(node)) and binding.action != "quit":
            continue  # Textual's own: cursor, focus, copy
        ident = (binding.action, binding.description)
        keys = found["app" if node is app else "own"].setdefault(ident, [])
        display = app.get_key_display(replace(binding, key=key, key_display=None))
        if display not in keys:
            keys.append(display)
        shown[ident] = shown.get(ident, False) or binding.show

    def rows(where: str) -> list[tuple[str, str]]:
        idents = sorted(found[where], key=lambda ident: not shown[ident])
        return [
            (
                " ".join(sorted(found[where][ident], key=_modified)),
                PALETTE if ident[0] == "command_palette" else ident[1],
            )
            for ident in idents
        ]

    mine = rows("own")
    screens = [(entry.key, f"{entry.title}: {entry.help}") for entry in ENTRIES]
    return [
        *([(title, mine)] if mine else []),
        ("Screens", screens),
        ("Everywhere", [*rows("app"), FIELDS]),
    ]


def _modified(display: str) -> bool:
    """Plain keys first (q before ^q)."""
    return display.startswith("^") or "+" in display.strip("+")


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background; }
    HelpScreen #help {
        width: 100%;
        max-width: 96;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-color: $text-primary;
        border-subtitle-color: $text-muted;
        background: $surface;
        padding: 0 1;
    }
    HelpScreen #help-legend { margin-top: 1; color: $text-muted; }
    HelpScreen > .help-screen--key { color: $text-accent; text-style: bold; }
    HelpScreen > .help-screen--section { color: $text-primary; text-style: bold underline; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"help-screen--key", "help-screen--section"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "dismiss", "Close", key_display="esc")
    ]

    def __init__(self, sections: list[Section], title: str = "keys", legend: str = "") -> None:
        super().__init__()
        self.sections, self.title_text, self.legend = sections, title, legend

    @property
    def rows(self) -> list[tuple[str, str]]:
        """(keys, description) of every section, in order."""
        return [row for _, rows in self.sections for row in rows]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(id="help-keys")
            if self.legend:
                yield Static(self.legend, id="help-legend", markup=False)

    def on_mount(self) -> None:
        box = self.query_one("#help")
        box.border_title = f"upquant · {self.title_text}"
        box.border_subtitle = "esc or ? closes · ↑↓ scroll"
        key_style = self.get_component_rich_style("help-screen--key")
        section_style = self.get_component_rich_style("help-screen--section")
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column()
        for k, (title, rows) in enumerate(self.sections):
            if k:
                table.add_row("", "")
            table.add_row(Text(title, style=section_style), "")
            for keys, description in rows:
                table.add_row(Text(keys, style=key_style), description)
        self.query_one("#help-keys", Static).update(table)
        box.focus()  # the arrows scroll it
