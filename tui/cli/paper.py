"""`upquant paper`: the paper broker's book (issue 12): filled by its helper."""

from __future__ import annotations
