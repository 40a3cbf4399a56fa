"""`upquant data ...`: candles into and out of the store."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tui.commands.common import (
    JsonOpt,
    MarketArg,
    UnitOpt,
    check,
    connect,
    console,
    err,
    parse_time,
)

data_app = typer.Typer(
    help="Candles in the store: import files, fetch from Upbit, status.", no_args_is_help=True
)


@data_app.command("import")
def data_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet file: timestamp (UTC), open, high, low, close, volume[, value]."
        ),
    ],
    market: Annotated[
        str, typer.Option("--market", "-m", help="Market code the file holds, e.g. KRW-BTC.")
    ],
    unit: UnitOpt = "1",
    as_json: JsonOpt = False,
) -> None:
    """Import candles from a file; bad rows are rejected and reported, good rows upserted."""
    from engine.data import import_candle_file

    unit = check(market, unit)
    with connect() as con:
        started = time.perf_counter()
        report = import_candle_file(con, path, market, unit)
        seconds = time.perf_counter() - started
    if as_json:
        console.print_json(
            json.dumps({**report.__dict__, "path": str(report.path), "seconds": seconds})
        )
        return
    console.print(
        f"{path}: read {report.rows_read:,} rows, {report.rows_new:,} new candles stored,"
        f" {report.rows_rejected:,} rejected ({seconds:.2f}s)"
    )
    for problem, count in report.problems.items():
        console.print(f"  [yellow]{count:,} × {problem}[/]")
    if report.examples:
        console.print(f"  first: {', '.join(report.examples[:5])}")


@data_app.command("fetch")
def data_fetch(
    market: MarketArg,
    since: Annotated[
        str, typer.Option("--since", help="Oldest candle to fetch (UTC), e.g. 2025-09-01.")
    ],
    unit: UnitOpt = "1",
    until: Annotated[
        str | None,
        typer.Option("--until", help="Fetch candles before this time (UTC); default now."),
    ] = None,
) -> None:
    """Backfill candles from the Upbit REST API (base URL from UPQUANT_UPBIT_REST_URL)."""
    from engine.data import fetch_into_store

    unit = check(market, unit)
    start = parse_time(since, "--since")
    end = parse_time(until, "--until") if until else None
    with (
        connect() as con,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,} candles"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress,
    ):
        task = progress.add_task(f"{market} {unit}", total=None)
        new = asyncio.run(
            fetch_into_store(
                con, market, unit, start, end, on_progress=lambda n: progress.advance(task, n)
            )
        )
    console.print(f"{market} unit {unit}: {new:,} new candles stored")


@data_app.command("status")
def data_status(as_json: JsonOpt = False) -> None:
    """Markets and units in the store with row counts, first and last candle."""
    from store.candles import candle_status

    with connect() as con:
        frame = candle_status(con)
    if as_json:
        console.print_json(frame.to_json(orient="records", date_format="iso"))
        return
    if frame.empty:
        console.print(
            "the store has no candles yet: run `upquant data import` or `upquant data fetch`"
        )
        return
    table = Table("market", "unit", "rows", "first (UTC)", "last (UTC)")
    for row in frame.itertuples():
        table.add_row(
            row.market,
            row.unit,
            f"{row.rows:,}",
            f"{row.first:%Y-%m-%d %H:%M}",
            f"{row.last:%Y-%m-%d %H:%M}",
        )
    console.print(table)
