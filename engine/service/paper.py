"""Workstation operations on the paper broker's book (issue 12): filled by its helper."""

from __future__ import annotations

from engine.service.base import StoreHolder


class PaperOps(StoreHolder):
    pass
