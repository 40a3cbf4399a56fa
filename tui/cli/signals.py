"""`upquant signals`: stored signals (issue 12): filled by its helper."""

from __future__ import annotations
