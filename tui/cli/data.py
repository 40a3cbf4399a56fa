"""`upquant data ...`: candles into and out of the store (import, fetch, stream, export,
resample, status).

Every command but `stream` is a Workstation operation (engine/service/data.py): the command
parses options, resolves paths, calls the operation and renders its answer. `stream` is an
open-ended live feed into the store: with no server it runs in this process; while a server
owns the store the server records it (the feed operations, engine/service/feeds.py) and the
command follows it, with the same output, `--json` and exit codes."""

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
    from tui.client import HttpWorkstation

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


POLL_S = 0.5  # how often `data stream` asks a server's feed for news


def _server_client() -> HttpWorkstation | None:
    """The running server's client when one owns the store (UPQUANT_SERVER=off: never)."""
    import os

    if os.environ.get("UPQUANT_SERVER", "").lower() == "off":
        return None
    from tui.client import server_client

    return server_client()


def _say(text: str, level: str) -> None:
    """One status line of a feed, as it happens (problems in yellow)."""
    err.print(text, style="yellow" if level != "info" else None, highlight=False, soft_wrap=True)


def _summarize(summary: dict[str, int], interrupted: bool, as_json: bool) -> None:
    """The stream's counts, the same in process and through a server; Ctrl-C: then 130."""
    if interrupted:
        if as_json:
            emit_json({**summary, "interrupted": True})
        else:
            console.print(", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.items()))
        raise KeyboardInterrupt
    if as_json:
        emit_json(summary)
    else:
        console.print(", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary.items()))


def _never_connected(url: str, seconds: float, problems: list[str], server: bool) -> CliError:
    last = f"; last: {problems[-1]}" if problems else ""
    where = (
        "the server's network and its UPQUANT_UPBIT_WS_URL (the server streams)"
        if server
        else "the network and UPQUANT_UPBIT_WS_URL"
    )
    return CliError(
        f"the stream never connected to Upbit at {url} in {seconds:.0f}s; nothing was"
        f" recorded{last}",
        f"check {where}; `upquant data fetch` backfills over REST when the socket is blocked",
    )


def _stream_via_server(
    client: HttpWorkstation,
    markets: list[str],
    unit: str,
    all_krw: bool,
    watch: list[str],
    seconds: float | None,
    as_json: bool,
) -> None:
    """`data stream` while a server owns the store: the server records a feed of these
    markets; its status lines are followed here (polled) until --for elapses, the feed ends
    by itself, or Ctrl-C; then the feed is stopped (what it buffered written) and its counts
    printed as in process."""
    from engine.service.feeds import (
        FeedStartRequest,
        FeedStatus,
        FeedStatusRequest,
        FeedStopRequest,
    )

    started = client.feed_start(
        FeedStartRequest(markets=markets, unit=unit, watch=watch, all_krw=all_krw)
    )
    began = time.monotonic()
    seen = 0

    def show(status: FeedStatus) -> None:
        nonlocal seen
        for message in status.messages:
            if message.seq > seen:
                _say(message.text, message.level)
                seen = message.seq

    show(started)
    interrupted = False
    try:
        while True:
            left = None if seconds is None else seconds - (time.monotonic() - began)
            if left is not None and left <= 0:
                break
            time.sleep(POLL_S if left is None else min(POLL_S, left))
            request = FeedStatusRequest(feed=started.id, after=seen)
            (status,) = client.feed_status(request).feeds
            show(status)
            if not status.running:  # it ended by itself: a refused subscription, a failure
                break
    except KeyboardInterrupt:  # the way to stop an open-ended stream: summary, then 130
        interrupted = True
        client.close()  # a request cut short leaves its connection unusable: a new one
    final = client.feed_stop(FeedStopRequest(feed=started.id))
    show(final)
    if final.error is not None and not interrupted:
        raise CliError(final.error, final.hint)
    stats = final.stats
    summary = {"markets": len(final.markets), **stats.model_dump()}
    if stats.connects == 0 and not interrupted:
        raise _never_connected(final.upbit, time.monotonic() - began, final.problems, True)
    _summarize(summary, interrupted, as_json)


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
    reconnecting after drops and backfilling what they missed over REST. With `upquant serve`
    running, the server records the stream (this command starts a feed there, prints its
    status lines and stops it when done): the feed then uses the server's environment, its
    UPQUANT_UPBIT_WS_URL and UPQUANT_UPBIT_REST_URL, not this terminal's."""
    unit = check(None, unit)
    chosen = list(dict.fromkeys(markets or []))
    for market in [*chosen, *(watch or [])]:
        check(market, unit)
    if not chosen and not watch and not all_krw:
        raise CliError("no market to stream", "name markets (KRW-BTC KRW-ETH) or pass --all-krw")
    remote = _server_client()
    if remote is not None:  # the server owns the store: it records, this terminal follows
        with remote:
            _stream_via_server(
                remote, chosen, unit, all_krw, list(dict.fromkeys(watch or [])), seconds, as_json
            )
        return
    _stream_in_process(chosen, unit, all_krw, watch or [], seconds, as_json)


def _stream_in_process(
    chosen: list[str],
    unit: str,
    all_krw: bool,
    watch: list[str],
    seconds: float | None,
    as_json: bool,
) -> None:
    """`data stream` with no server: the feed runs here, on the store this process opens."""
    from engine.data.backfill import krw_markets
    from engine.data.feed import LiveFeed

    if all_krw:
        chosen = list(dict.fromkeys([*chosen, *asyncio.run(krw_markets())]))
    if not chosen and not watch:
        raise CliError("no market to stream", "name markets (KRW-BTC KRW-ETH) or pass --all-krw")

    problems: list[str] = []

    def status(text: str, level: str) -> None:
        if level != "info":
            problems.append(text)
        _say(text, level)

    with connect() as con:
        feed = LiveFeed(con, chosen, unit, watch=watch, on_status=status)

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
    if stats.connects == 0 and not interrupted:
        from engine.upbit.client import ws_url
        from engine.upbit.errors import redact

        raise _never_connected(redact(ws_url()), time.monotonic() - started, problems, False)
    _summarize(summary, interrupted, as_json)


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
