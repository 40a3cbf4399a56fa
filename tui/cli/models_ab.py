"""`upquant models ...`: champion vs challengers (A/B from the shadow record) and the promotion gate (issue 11). Registered on `models_app` by import."""

from __future__ import annotations

from tui.cli.models import models_app

__all__ = ["models_app"]
