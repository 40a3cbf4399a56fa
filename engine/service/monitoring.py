"""Workstation operations on model-operation settings per market/unit, feature drift (PSI, KS) and performance drift events (issue 11)."""

from __future__ import annotations

from engine.service.base import StoreHolder


class MonitoringOps(StoreHolder):
    pass
