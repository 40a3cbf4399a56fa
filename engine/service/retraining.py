"""Workstation operations on retraining (scheduled, drift-triggered, on request) and online updates, each registering a challenger (issue 11)."""

from __future__ import annotations

from engine.service.base import StoreHolder


class RetrainOps(StoreHolder):
    pass
