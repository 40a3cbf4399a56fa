"""`upquant data ...`: candles into and out of the store (import, fetch, stream, export,
resample, status)."""

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
    from engine.data.backfill import FetchReport
    from engine.data.candles import ImportReport

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


def _print_import(report: ImportReport, seconds: float, out: Any) -> None:
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
    from engine.data.candles import ImportConflict, ValidationFailed, import_candles

    with connect() as con:
        started = time.perf_counter()
        try:
            report = import_candles(
                con, path, market, unit, fmt=fmt, strict=strict, overwrite=overwrite
            )
        except (ValidationFailed, ImportConflict) as exc:
            hint = (
                exc.hint
                if isinstance(exc, ImportConflict)
                else "fix the rows listed, or drop --strict to import the good ones"
            )
            seconds = round(time.perf_counter() - started, 3)
            if as_json:
                fail_json({**exc.report.to_dict(), "seconds": seconds}, str(exc), hint)
            _print_import(exc.report, seconds, err)
            raise CliError(str(exc), hint) from None
        seconds = time.perf_counter() - started
    if as_json:
        emit_json({**report.to_dict(), "seconds": round(seconds, 3)})
        return
    _print_import(report, seconds, console)


def _fetch_progress(total_markets: int) -> tuple[Progress, Callable[[FetchReport], None]]:
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

    def update(report: FetchReport) -> None:
        progress.update(
            task,
            description=f"markets {report.markets_done}/{total_markets}",
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
    from engine.data.backfill import fetch_markets, krw_markets

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
    if all_krw:
        chosen = list(dict.fromkeys([*chosen, *asyncio.run(krw_markets())]))
    if not chosen:
        raise CliError("no market to fetch", "name markets (KRW-BTC KRW-ETH) or pass --all-krw")
    progress, update = _fetch_progress(len(chosen))
    with connect() as con, progress:
        report = asyncio.run(
            fetch_markets(
                con,
                chosen,
                unit,
                start,
                end,
                concurrency=concurrency,
                refetch=refetch,
                on_progress=update,
            )
        )
    failure: CliError | None = None
    if report.stopped is not None:
        failure = CliError(str(report.stopped), getattr(report.stopped, "hint", None))
    elif report.failed:
        names = ", ".join(s.market for s in report.failed)
        failure = CliError(
            f"{len(report.failed)} of {len(report.series)} markets failed ({names}):"
            f" {report.failed[0].error}",
            "the other markets were fetched; fix or drop the failed ones and run again",
        )
    if as_json and failure is not None:
        fail_json(report.to_dict(), str(failure), failure.hint)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_fetch(report)
    if failure is not None:
        raise failure


def _print_fetch(report: FetchReport) -> None:
    if len(report.series) <= 30:
        table = Table("market", "unit", "requests", "candles", "new", "status")
        for s in report.series:
            state = (
                Text(str(s.error), style="red")
                if s.error is not None
                else "done"
                if s.done
                else f"stopped at {s.chunks_done}/{s.chunks_total}"
            )
            table.add_row(
                s.market, s.unit, f"{s.chunks_done:,}", f"{s.candles:,}", f"{s.new:,}", state
            )
        console.print(table)
    console.print(
        f"{len(report.series)} markets unit {report.unit}: {report.candles:,} candles fetched,"
        f" {report.new:,} new candles stored; {report.requests:,} requests in"
        f" {report.seconds:.1f}s ({report.request_rate:.1f} req/s, {report.rate_limited} × 429)",
        highlight=False,
        soft_wrap=True,
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
    from engine.data.series import export_series

    unit = check(market, unit)
    start = parse_time(since, "--since") if since else None
    end = parse_time(until, "--until") if until else None
    with connect() as con:
        rows = export_series(con, market, unit, out, start, end)
    console.print(
        f"{market} unit {unit}: {rows:,} candles written to {out}", highlight=False, soft_wrap=True
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
    from engine.data.series import resample_series

    check(market, from_unit)
    start = parse_time(since, "--since") if since else None
    end = parse_time(until, "--until") if until else None
    with connect() as con:
        report = resample_series(con, market, from_unit, to_unit, start, end)
    if as_json:
        emit_json(report.__dict__)
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
