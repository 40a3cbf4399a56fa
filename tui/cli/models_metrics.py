"""`upquant models ...`: live and stored metrics of a model (issue 11). Registered on `models_app` by import."""

from __future__ import annotations

from tui.cli.models import models_app

__all__ = ["models_app"]
