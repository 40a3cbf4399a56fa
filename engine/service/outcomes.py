"""Workstation operations on the live prediction log: resolving outcomes and rolling live metrics (issue 11)."""

from __future__ import annotations

from engine.service.base import StoreHolder


class OutcomeOps(StoreHolder):
    pass
