"""Workstation operations on champion vs challengers from the shadow record, and the promotion gate (issue 11)."""

from __future__ import annotations

from engine.service.base import StoreHolder


class ABOps(StoreHolder):
    pass
