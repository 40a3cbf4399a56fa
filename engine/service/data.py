"""Workstation operations on candles in the store: status, import, fetch, export, resample.

Files named in a request (the file to import, the file to export to) are paths on the
machine that owns the store: a server reads and writes them there, so they must be absolute
(the CLI resolves what the user typed). A refused import and a fetch that failed for some
markets are answers, not errors: their report (what would change, what was fetched) is what
the caller needs to decide, so it comes back with `error` and `hint` set and the CLI exits 1.

`data fetch` reports progress in process only: a caller that wants it wraps the call in
`fetch_progress(callback)`; over HTTP the call waits for the whole report.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, RootModel

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, ServiceError, operation

if TYPE_CHECKING:
    from engine.data.backfill import FetchReport
    from engine.data.candles import ImportReport


def local_file(text: str, what: str, *, exists: bool) -> Path:
    """`text` as a path on the store's machine: absolute, and (with `exists`) a file there."""
    path = Path(text)
    if not path.is_absolute():
        raise ServiceError(
            f"{what} {text}: a relative path",
            "give an absolute path: the operation runs where the store is, not in your"
            " directory (the CLI resolves paths for you)",
        )
    if exists and not path.exists():
        raise ServiceError(
            f"{path}: no such file",
            "check the path; it is read on the machine that owns the store",
        )
    return path


def finite(value: Any) -> float | None:
    """A number as JSON carries it: NaN and infinities are null."""
    number = float(value)
    return number if math.isfinite(number) else None


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


# --------------------------------------------------------------------------- import


class DataImportRequest(Request):
    path: str = Field(..., description="Absolute path of a CSV, Parquet or JSON candle file.")
    market: str | None = Field(None, description="Market the file holds (REST dumps say it).")
    unit: str | None = Field(None, description="Candle unit (REST dumps say it).")
    format: str = Field("auto", description="auto, shared, pyupbit or upbit.")
    strict: bool = Field(False, description="Reject the whole file if any row is bad.")
    overwrite: bool = Field(False, description="Replace stored candles the file disagrees with.")


class RejectedRow(BaseModel):
    row: int
    problems: list[str]


class ChangedCandle(BaseModel):
    ts: datetime
    stored: dict[str, float | None]
    incoming: dict[str, float | None]


class SeriesChange(BaseModel):
    series: str
    candles: int
    first: datetime | None
    last: datetime | None
    examples: list[ChangedCandle]


class DataImport(Response):
    """What an import read, stored, rejected, updated and left unchanged. A refused import
    (a bad row under `strict`, or stored candles it would change without `overwrite`) wrote
    nothing: `written` is false and `error`/`hint` say why and what to do."""

    path: str
    format: str
    series: list[str]
    rows_read: int
    rows_new: int
    rows_rejected: int
    problems: dict[str, int]
    examples: list[str]
    written: bool
    rejected: list[RejectedRow]
    rows_updated: int
    rows_unchanged: int
    changes: list[SeriesChange]
    seconds: float
    error: str | None = None
    hint: str | None = None


def _import_answer(
    report: ImportReport, seconds: float, error: str | None = None, hint: str | None = None
) -> DataImport:
    return DataImport(
        path=str(report.path),
        format=report.format,
        series=report.series,
        rows_read=report.rows_read,
        rows_new=report.rows_new,
        rows_rejected=report.rows_rejected,
        problems=report.problems,
        examples=report.examples,
        written=report.written,
        rejected=[RejectedRow.model_validate(r) for r in report.rejected],
        rows_updated=report.rows_updated,
        rows_unchanged=report.rows_unchanged,
        changes=[
            SeriesChange(
                series=f"{d.market} {d.unit}",
                candles=d.changed,
                first=d.first_changed,
                last=d.last_changed,
                examples=[
                    ChangedCandle(
                        ts=e["ts"],
                        stored={k: finite(v) for k, v in e["stored"].items()},
                        incoming={k: finite(v) for k, v in e["incoming"].items()},
                    )
                    for e in d.examples
                ],
            )
            for d in report.changes
        ],
        seconds=round(seconds, 3),
        error=error,
        hint=hint,
    )


# --------------------------------------------------------------------------- fetch


class DataFetchRequest(Request):
    markets: list[str] = Field(default_factory=list, description="Upbit market codes.")
    all_krw: bool = Field(False, description="Also every KRW market Upbit lists.")
    unit: str = "1"
    since: datetime = Field(..., description="Oldest candle to fetch (naive: UTC).")
    until: datetime | None = Field(None, description="Candles before this time; default now.")
    refetch: bool = Field(False, description="Ask again for ranges an earlier fetch completed.")
    concurrency: int = Field(4, ge=1, le=16, description="Requests in flight at once.")


class MarketFetch(BaseModel):
    market: str
    since: datetime
    until: datetime
    requests_planned: int
    requests_done: int
    candles: int
    new: int
    error: str | None


class DataFetch(Response):
    """A backfill's report per market and in total. When it stopped early (Upbit blocked or
    unreachable: `stopped`) or some markets failed, `error`/`hint` say so; what was fetched
    is stored either way, and running the same fetch again continues."""

    unit: str
    markets: list[MarketFetch]
    candles: int
    new: int
    requests: int
    rate_limited: int
    seconds: float
    requests_per_second: float
    stopped: str | None
    error: str | None = None
    hint: str | None = None


class FetchProgress(BaseModel):
    """A running fetch's counts (what a progress bar shows)."""

    markets_done: int
    markets: int
    chunks_done: int
    chunks_total: int
    candles: int
    request_rate: float


_progress: ContextVar[Callable[[FetchProgress], object] | None] = ContextVar(
    "fetch_progress", default=None
)


@contextmanager
def fetch_progress(callback: Callable[[FetchProgress], object]) -> Iterator[None]:
    """Have `data_fetch` calls made in process inside this block report to `callback`."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def _fetch_answer(report: FetchReport) -> DataFetch:
    error = hint = None
    if report.stopped is not None:
        error, hint = str(report.stopped), getattr(report.stopped, "hint", None)
    elif report.failed:
        names = ", ".join(s.market for s in report.failed)
        error = (
            f"{len(report.failed)} of {len(report.series)} markets failed ({names}):"
            f" {report.failed[0].error}"
        )
        hint = "the other markets were fetched; fix or drop the failed ones and run again"
    return DataFetch.model_validate({**report.to_dict(), "error": error, "hint": hint})


# --------------------------------------------------------------------------- export, resample


class DataExportRequest(Request):
    market: str
    unit: str = "1"
    out: str = Field(..., description="Absolute path of the .csv or .parquet file to write.")
    since: datetime | None = None
    until: datetime | None = None


class DataExport(Response):
    market: str
    unit: str
    rows: int
    path: str


class DataResampleRequest(Request):
    market: str
    from_unit: str = Field("1", description="Stored unit to aggregate.")
    to_unit: str = Field("15", description="Unit to build: a multiple of from_unit, or D.")
    since: datetime | None = None
    until: datetime | None = None


class DataResample(Response):
    market: str
    from_unit: str
    to_unit: str
    source_rows: int
    written: int
    new: int


def _utc(stamp: datetime | None) -> datetime | None:
    return stamp if stamp is None or stamp.tzinfo else stamp.replace(tzinfo=UTC)


class DataOps(StoreHolder):
    @operation("read")
    def data_status(self, request: DataStatusRequest) -> DataStatus:
        """Per market and unit: rows, first/last candle, gaps (count, longest), last update."""
        from engine.data.series import series_status

        frame = series_status(self.con(), request.min_gap)
        return DataStatus.model_validate(
            json.loads(frame.to_json(orient="records", date_format="iso"))
        )

    @operation("write")
    def data_import(self, request: DataImportRequest) -> DataImport:
        """Import a candle file: rows validated, bad ones rejected, good ones upserted; an
        import that would change stored candles is refused (nothing written) unless
        `overwrite`."""
        from engine.data.candles import ImportConflict, ValidationFailed, import_candles
        from engine.upbit.markets import check_market, check_unit

        if request.market is not None:  # a bad argument is named before the file is looked at
            check_market(request.market)
        if request.unit is not None:
            check_unit(request.unit)
        path = local_file(request.path, "import file", exists=True)
        started = time.perf_counter()
        try:
            report = import_candles(
                self.con(),
                path,
                request.market,
                request.unit,
                fmt=request.format,
                strict=request.strict,
                overwrite=request.overwrite,
            )
        except ValidationFailed as exc:
            hint = "fix the rows listed, or drop --strict to import the good ones"
            return _import_answer(exc.report, time.perf_counter() - started, str(exc), hint)
        except ImportConflict as exc:
            return _import_answer(exc.report, time.perf_counter() - started, str(exc), exc.hint)
        return _import_answer(report, time.perf_counter() - started)

    @operation("write")
    def data_fetch(self, request: DataFetchRequest) -> DataFetch:
        """Backfill candles from the Upbit REST API, resumably: the same fetch again fetches
        only what is missing."""
        import asyncio

        from engine.data.backfill import fetch_markets, krw_markets
        from engine.upbit.markets import check_market, check_unit

        unit = check_unit(request.unit)
        since = request.since if request.since.tzinfo else request.since.replace(tzinfo=UTC)
        until = _utc(request.until)
        now = datetime.now(UTC)
        if since > now:  # Upbit has no candles after the forming one
            raise ServiceError(
                f"since {since:%Y-%m-%d %H:%M} UTC is in the future; there are no candles"
                " to fetch after it",
                "give the oldest candle to fetch as a past UTC time",
            )
        if until is not None and until <= since:
            raise ServiceError(
                f"until {until:%Y-%m-%d %H:%M} is not after since {since:%Y-%m-%d %H:%M}",
                "swap them",
            )
        chosen = [check_market(m) for m in dict.fromkeys(request.markets)]
        if request.all_krw:
            chosen = list(dict.fromkeys([*chosen, *asyncio.run(krw_markets())]))
        if not chosen:
            raise ServiceError(
                "no market to fetch", "name markets (KRW-BTC KRW-ETH) or pass --all-krw"
            )
        callback = _progress.get()

        def progress(report: FetchReport) -> None:
            if callback is not None:
                callback(
                    FetchProgress(
                        markets_done=report.markets_done,
                        markets=len(chosen),
                        chunks_done=report.chunks_done,
                        chunks_total=report.chunks_total,
                        candles=report.candles,
                        request_rate=report.request_rate,
                    )
                )

        report = asyncio.run(
            fetch_markets(
                self.con(),
                chosen,
                unit,
                since,
                until,
                concurrency=request.concurrency,
                refetch=request.refetch,
                on_progress=progress,
            )
        )
        return _fetch_answer(report)

    @operation("write")
    def data_export(self, request: DataExportRequest) -> DataExport:
        """Write one stored series as CSV or Parquet (timestamp UTC, open, high, low, close,
        volume, value); `data_import` reads it back unchanged."""
        from engine.data.series import export_series
        from engine.upbit.markets import check_unit

        path = local_file(request.out, "export file", exists=False)
        rows = export_series(
            self.con(), request.market, request.unit, path, _utc(request.since), _utc(request.until)
        )
        return DataExport(
            market=request.market, unit=check_unit(request.unit), rows=rows, path=str(path)
        )

    @operation("write")
    def data_resample(self, request: DataResampleRequest) -> DataResample:
        """Build larger candles from stored smaller ones in SQL, aligned like Upbit's (UTC)."""
        from engine.data.series import resample_series

        report = resample_series(
            self.con(),
            request.market,
            request.from_unit,
            request.to_unit,
            _utc(request.since),
            _utc(request.until),
        )
        return DataResample.model_validate(vars(report))
