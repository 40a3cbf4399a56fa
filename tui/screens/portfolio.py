"""PortfolioScreen: placeholder until its helper fills it (issue 13)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class PortfolioScreen(Screen[None]):
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("portfolio: not built yet")
        yield Footer()
