"""StationScreen: a screen of the workstation, which reads the app as the workstation it is."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

if TYPE_CHECKING:
    from tui.app import UpquantApp


class StationScreen(Screen[None]):
    """A workstation screen (tui/screens/registry.py): `station` is its app, typed."""

    @property
    def station(self) -> UpquantApp:
        """The app, as the workstation it is (facade, clock, zone, session view, chart)."""
        return cast("UpquantApp", self.app)
