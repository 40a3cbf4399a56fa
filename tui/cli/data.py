"""`upquant data ...`: candles into and out of the store (import, fetch, stream, export,
resample, status).

Every command but `stream` is a Workstation operation (engine/service/data.py): the command
parses options, resolves paths, calls the operation and renders its answer. `stream` is an
open-ended live feed into the store: it runs in this process, and only when no server owns
the store (the server runs the live feed itself)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tui.cli.options import JsonOpt, MarketArg, UnitOpt, check, connect, parse_time, workstation
from tui.cli.render import CliError, console, emit_json, err, fail_json

if TYPE_CHECKING:
    from engine.service.data import DataFetch, DataImport, FetchProgress

data_app = typer.Typer(
    help="Candles in the store: import, fetch and stream from Upbit, export, resample, status.",
    no_args_is_help=True,
)

SinceOpt = Annotated[
    str | None, typer.Option("--since", help="First candle (UTC), e.g. 2025-09-01.")
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Candles before this time (UTC); default: all.")
]


def _print_import(report: DataImport, seconds: float, out: Any) -> None:
    series = ", ".join(report.series) or "nothing"
    out.print(
        f"{report.path}: read {report.rows_read:,} rows ({report.format} format, {series}),"
        f" {report.rows_new:,} new candles {'stored' if report.written else 'to store'},"
        f" {report.rows_rejected:,} rejected, {report.rows_updated:,}"
        f" {'updated' if report.written else 'to update'}, {report.rows_unchanged:,} unchanged"
        f" ({seconds:.2f}s)",
        highlight=False,
        soft_wrap=True,
    )
    for problem, count in report.problems.items():
        out.print(f"  {count:,} × {problem}", style="yellow", highlight=False, soft_wrap=True)
    if report.examples:
        out.print(f"  first: {', '.join(report.examples)}", highlight=False, soft_wrap=True)


@data_app.command("import")
def data_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV, Parquet or JSON file: ../shared/data format (timestamp in UTC, open,"
            " high, low, close, volume[, value]), a pyupbit export (KST index, open, high,"
            " low, close, volume, value) or an Upbit REST candle dump (JSON array)."
        ),
    ],
    market: Annotated[
        str | None,
        typer.Option(
            "--market", "-m", help="Market the file holds, e.g. KRW-BTC (REST dumps say it)."
        ),
    ] = None,
    unit: Annotated[
        str | None,
        typer.Option(
            "--unit",
            "-u",
            help="Candle unit: minutes 1,3,5,10,15,30,60,240 or D (REST dumps say it).",
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="auto (from the columns), shared, pyupbit or upbit."),
    ] = "auto",
    strict: Annotated[
        bool, typer.Option("--strict", help="Reject the whole file if any row is bad.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace stored candles the file disagrees with (without it such an import"
            " is refused and nothing is written).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import candles from a file: rows are validated first; bad rows are rejected and reported
    (with --strict: the whole file, nothing written), good rows upserted. An import that would
    change stored candles is refused unless --overwrite; a file without `value` keeps the
    stored values."""
    from engine.service.data import DataImportRequest

    request = DataImportRequest(
        path=str(path.expanduser().absolute()),
        market=market,
        unit=unit,
        format=fmt,
        strict=strict,
        overwrite=overwrite,
    )
    with workstation() as ws:
        report = ws.data_import(request)
    payload = report.model_dump(mode="json", exclude={"error", "hint"})
    if report.error is not None:  # refused: nothing written, the report says why
        if as_json:
            fail_json(payload, report.error, report.hint)
        _print_import(report, report.seconds, err)
        raise CliError(report.error, report.hint)
    if as_json:
        emit_json(payload)
        return
    _print_import(report, report.seconds, console)


def _fetch_progress() -> tuple[Progress, Callable[[FetchProgress], None]]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} requests"),
        TextColumn("{task.fields[candles]:,} candles"),
        TextColumn("{task.fields[rate]:.1f} req/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = progress.add_task("markets", total=1, candles=0, rate=0.0)

    def update(report: FetchProgress) -> None:
        progress.update(
            task,
            description=f"markets {report.markets_done}/{report.markets}",
            completed=report.chunks_done,
            total=report.chunks_total,
            candles=report.candles,
            rate=report.request_rate,
        )

    return progress, update


@data_app.command("fetch")
def data_fetch(
    markets: Annotated[
        list[str] | None,
        typer.Argument(help="Upbit market codes, e.g. KRW-BTC KRW-ETH.", show_default=False),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="Oldest candle to fetch (UTC), e.g. 2025-09-01.")
    ] = "",
    unit: UnitOpt = "1",
    until: Annotated[
        str | None,
        typer.Option("--until", help="Fetch candles before this time (UTC); default now."),
    ] = None,
    all_krw: Annotated[
        bool, typer.Option("--all-krw", help="Every KRW market Upbit lists (market/all).")
    ] = False,
    refetch: Annotated[
        bool,
        typer.Option("--refetch", help="Ask Upbit again for ranges an earlier fetch completed."),
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=16, help="Requests in flight at once.")
    ] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Backfill candles from the Upbit REST API (UPQUANT_UPBIT_REST_URL), resumably: run the
    same command again after an interruption and it fetches only what is missing."""
    from engine.service.data import DataFetchRequest, fetch_progress

    if not since:
        raise CliError("--since is required", "e.g. --since 2025-09-01 (UTC)")
    unit = check(None, unit)
    start = parse_time(since, "--since")
    now = datetime.now(UTC)
    if start > now:  # nothing to fetch: Upbit has no candles after the forming one
        raise CliError(
            f"--since {since} is in the future (now is {now:%Y-%m-%d %H:%M} UTC);"
            " there are no candles to fetch after it",
            f"give the oldest candle to fetch as a past UTC time, e.g. --since"
            f" {now - timedelta(days=7):%Y-%m-%d}",
        )
    end = parse_time(until, "--until") if until else None
    if end is not None and end <= start:
        raise CliError(f"--until {until} is not after --since {since}", "swap them")
    chosen = list(dict.fromkeys(markets or []))
    for market in chosen:
        check(market, unit)
    if not chosen and not all_krw:
        raise CliError("no market to fetch", "name markets (KRW-BTC KRW-ETH) or pass --all-krw")
    request = DataFetchRequest(
        markets=chosen,
        all_krw=all_krw,
        unit=unit,
        since=start,
        until=end,
        refetch=refetch,
        concurrency=concurrency,
    )
    progress, update = _fetch_progress()  # in process only; over HTTP the answer is awaited
    with workstation() as ws, progress, fetch_progress(update):
        report = ws.data_fetch(request)
    payload = report.model_dump(mode="json", exclude={"error", "hint"})
    if as_json and report.error is not None:
        fail_json(payload, report.error, report.hint)
    if as_json:
        emit_json(payload)
    else:
        _print_fetch(report)
    if report.error is not None:
        raise CliError(report.error, report.hint)


def _print_fetch(report: DataFetch) -> None:
    if len(report.markets) <= 30:
        table = Table("market", "unit", "requests", "candles", "new", "status")
        for s in report.markets:
            state = (
                Text(str(s.error), style="red")
                if s.error is not None
                else "done"
                if s.requests_done >= s.requests_planned
                else f"stopped at {s.requests_done}/{s.requests_planned}"
            )
            table.add_row(
                s.market,
                report.unit,
                f"{s.requests_done:,}",
                f"{s.candles:,}",
                f"{s.new:,}",
                state,
            )
        console.print(table)
    console.print(
        f"{len(report.markets)} markets unit {report.unit}: {report.candles:,} candles fetched,"
        f" {report.new:,} new candles stored; {report.requests:,} requests in"
        f" {report.seconds:.1f}s ({report.requests_per_second:.1f} req/s,"
        f" {report.rate_limited} × 429)",
        highlight=False,
        soft_wrap=True,
    )


def _refuse_under_server() -> None:
    """`data stream` writes the store itself: refused while a server owns it (the server
    runs the live feed; a second writer could not open the store anyway)."""
    try:
        from engine.server import lifecycle
    except ImportError:  # no server support in this build: nothing can be running
        return
    running = getattr(lifecycle, "running_server", None)
    server = running() if callable(running) else None
    if server:
        url = getattr(server, "url", None)
        where = f" at {url}" if url else ""
        raise CliError(
            f"a server{where} owns the store and records its live candles; `upquant data"
            " stream` would be a second writer",
            "watch the live feed in `upquant tui` (it connects to the server), or stop"
            " `upquant serve` to stream in this process",
        )


@data_app.command("stream")
def data_stream(
    markets: Annotated[
        list[str] | None,
        typer.Argument(help="Markets whose candles to stream, e.g. KRW-BTC KRW-ETH."),
    ] = None,
    unit: UnitOpt = "1",
    all_krw: Annotated[
        bool, typer.Option("--all-krw", help="Every KRW market Upbit lists (market/all).")
    ] = False,
    watch: Annotated[
        list[str] | None,
        typer.Option("--watch", "-w", help="Also stream trades and tickers of this market."),
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option("--for", help="Stop after this many seconds (default: until Ctrl-C)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record live candles into the store over one Upbit WebSocket (UPQUANT_UPBIT_WS_URL),
    reconnecting after drops and backfilling what they missed over REST."""
    from engine.data.backfill import krw_markets
    from engine.data.feed import LiveFeed

    _refuse_under_server()
    unit = check(None, unit)
    chosen = list(dict.fromkeys(markets or []))
    for market in [*chosen, *(watch or [])]:
        check(market, unit)
    if all_krw:
        chosen = list(dict.fromkeys([*chosen, *asyncio.run(krw_markets())]))
    if not chosen and not watch:
        raise CliError("no market to stream", "name markets (KRW-BTC KRW-ETH) or pass --all-krw")

    problems: list[str] = []

    def status(text: str, level: str) -> None:
        if level != "info":
            problems.append(text)
        err.print(
            text, style="yellow" if level != "info" else None, highlight=False, soft_wrap=True
        )

    with connect() as con:
        feed = LiveFeed(con, chosen, unit, watch=watch or (), on_status=status)

        async def main() -> None:
            task = asyncio.create_task(feed.run())
            try:
                done, _ = await asyncio.wait([task], timeout=seconds)
                if task in done:
                    task.result()  # the feed stopped by itself: a refused subscription
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        started = time.monotonic()
        interrupted = False
        try:
            asyncio.run(main())
        except KeyboardInterrupt:  # the way to stop an open-ended stream: summary, then 130
            interrupted = True
    stats = feed.stats
    summary = {
        "markets": len(chosen),
        "frames": stats.frames,
        "candles_closed": stats.closed_by_next + stats.closed_by_clock,
        "candles_written": stats.rows_written,
        "connects": stats.connects,
        "drops": stats.drops,
        "backfilled": stats.backfilled,
        "malformed": stats.malformed,
    }
    if interrupted:
        if as_json:
            emit_json({**summary, "interrupted": True})
        else:
            console.print(", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.items()))
        raise KeyboardInterrupt
    if stats.connects == 0:
        from engine.upbit.client import ws_url
        from engine.upbit.errors import redact

        last = f"; last: {problems[-1]}" if problems else ""
        raise CliError(
            f"the stream never connected to Upbit at {redact(ws_url())} in"
            f" {time.monotonic() - started:.0f}s; nothing was recorded{last}",
            "check the network and UPQUANT_UPBIT_WS_URL; `upquant data fetch` backfills over"
            " REST when the socket is blocked",
        )
    if as_json:
        emit_json(summary)
    else:
        console.print(", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.items()))


@data_app.command("export")
def data_export(
    market: MarketArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .csv or .parquet.")],
    unit: UnitOpt = "1",
    since: SinceOpt = None,
    until: UntilOpt = None,
) -> None:
    """Write one stored series as CSV or Parquet (timestamp UTC, open, high, low, close,
    volume, value); `upquant data import` reads it back unchanged."""
    from engine.service.data import DataExportRequest

    unit = check(market, unit)
    start = parse_time(since, "--since") if since else None
    end = parse_time(until, "--until") if until else None
    request = DataExportRequest(
        market=market, unit=unit, out=str(out.expanduser().absolute()), since=start, until=end
    )
    with workstation() as ws:
        result = ws.data_export(request)
    console.print(
        f"{result.market} unit {result.unit}: {result.rows:,} candles written to {result.path}",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("resample")
def data_resample(
    market: MarketArg,
    from_unit: Annotated[
        str, typer.Option("--from-unit", help="Stored unit to aggregate, e.g. 1.")
    ] = "1",
    to_unit: Annotated[
        str, typer.Option("--to-unit", help="Unit to build: a multiple of --from-unit, or D.")
    ] = "15",
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build larger candles from stored smaller ones in SQL, aligned like Upbit's (UTC)."""
    from engine.service.data import DataResampleRequest

    check(market, from_unit)
    start = parse_time(since, "--since") if since else None
    end = parse_time(until, "--until") if until else None
    request = DataResampleRequest(
        market=market, from_unit=from_unit, to_unit=to_unit, since=start, until=end
    )
    with workstation() as ws:
        report = ws.data_resample(request)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    console.print(
        f"{market}: {report.source_rows:,} unit {report.from_unit} candles →"
        f" {report.written:,} unit {report.to_unit} candles ({report.new:,} new)",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("status")
def data_status(
    min_gap: Annotated[
        int,
        typer.Option(
            "--min-gap",
            help="Count a gap from this many consecutive missing candles (a bucket without"
            " trades has no candle at Upbit, so single ones are normal).",
        ),
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Per market and unit: rows, first/last candle, gaps (count, longest), last update."""
    from engine.service.data import DataStatusRequest

    with workstation() as ws:
        status = ws.data_status(DataStatusRequest(min_gap=min_gap))
    if as_json:
        emit_json(status.model_dump(mode="json"))
        return
    if not status.root:
        console.print(
            "the store has no candles yet: run `upquant data import` or `upquant data fetch`"
        )
        return
    table = Table(
        "market",
        "unit",
        "rows",
        "first (UTC)",
        "last (UTC)",
        "missing",
        f"gaps ≥{min_gap}",
        "longest gap",
        "last update (UTC)",
    )
    for row in status.root:
        longest = (
            f"{row.longest_gap:,} from {row.longest_gap_start:%Y-%m-%d %H:%M}"
            if row.longest_gap
            else "-"
        )
        updated = "-" if row.last_update is None else f"{row.last_update:%Y-%m-%d %H:%M:%S}"
        table.add_row(
            row.market,
            row.unit,
            f"{row.rows:,}",
            f"{row.first:%Y-%m-%d %H:%M}",
            f"{row.last:%Y-%m-%d %H:%M}",
            f"{row.missing:,}",
            f"{row.gaps:,}",
            longest,
            updated,
        )
    console.print(table)
