"""Workstation operations for the TUI's Markets screen (issue 13): the market board.

Placeholder: the Markets helper fills it (one row per watched or stored market: last price,
24 h change, KRW volume, a sparkline's closes, the live decision, position, drift badge).
"""

from __future__ import annotations

from engine.service.base import StoreHolder


class BoardOps(StoreHolder):
    """The market board (see the module docstring)."""
