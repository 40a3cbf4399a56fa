"""Workstation operations on candles in the store: status, import, fetch, export, resample."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, Field, RootModel

from engine.service.base import StoreHolder
from engine.service.core import Request, operation


class DataStatusRequest(Request):
    min_gap: int = Field(2, ge=1, description="Count a gap from this many missing candles.")


class SeriesStatus(BaseModel):
    market: str
    unit: str
    rows: int
    first: datetime
    last: datetime
    missing: int
    gaps: int
    longest_gap: int
    longest_gap_start: datetime | None
    last_update: datetime | None


class DataStatus(RootModel[list[SeriesStatus]]):
    """Per market and unit: rows, first/last candle, gaps, last update."""


class DataOps(StoreHolder):
    @operation("read")
    def data_status(self, request: DataStatusRequest) -> DataStatus:
        """Per market and unit: rows, first/last candle, gaps (count, longest), last update."""
        from engine.data.series import series_status

        frame = series_status(self.con(), request.min_gap)
        return DataStatus.model_validate(
            json.loads(frame.to_json(orient="records", date_format="iso"))
        )
