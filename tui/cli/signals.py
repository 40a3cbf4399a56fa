"""`upquant signals`: the signals the engine stored, newest first, filtered by market, unit,
action, session mode or strategy spec (one `signals` operation)."""

from __future__ import annotations

import re
from datetime import UTC, timedelta, timezone
from typing import Annotated, Literal

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, workstation
from tui.cli.render import CliError, console, emit_json, styled

# Upbit's users read Korean time (DESIGN.md: faces show KST by default, UTC on request)
KST = timezone(timedelta(hours=9), "KST")
# engine.service.stored.STRATEGY_PATTERN; a literal keeps `--help` from importing the engine
_STRATEGY = re.compile(r"^[0-9a-f]{4,64}$")
PAGE_MAX = 10_000


def _confidence(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def signals(
    market: Annotated[
        str | None, typer.Option("--market", "-m", help="Only this market, e.g. KRW-BTC.")
    ] = None,
    unit: Annotated[
        str | None,
        typer.Option("--unit", "-u", help="Only this candle unit: 1,3,5,10,15,30,60,240 or D."),
    ] = None,
    mode: Annotated[
        Literal["live", "replay", "demo"] | None,
        typer.Option("--mode", help="Only signals of live, replay or demo sessions."),
    ] = None,
    action: Annotated[
        Literal["buy", "sell", "hold"] | None,
        typer.Option("--action", help="Only this action: buy, sell or hold."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="Only signals decided by this strategy spec: its hash or a prefix of it"
            " (at least 4 hex digits).",
        ),
    ] = None,
    last: Annotated[
        int, typer.Option("--last", "-n", help=f"The newest N signals (1 to {PAGE_MAX:,}).")
    ] = 100,
    utc: Annotated[bool, typer.Option("--utc", help="Show times in UTC instead of KST.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stored signals, newest first: time, market, unit, action, confidence, source, reason."""
    from engine.service.stored import SignalsRequest
    from engine.upbit.markets import check_market, check_unit

    if market is not None:
        check_market(market)
    if unit is not None:
        unit = check_unit(unit)
    if strategy is not None:
        strategy = strategy.lower()
        if not _STRATEGY.match(strategy):
            raise CliError(
                f"--strategy {strategy!r} is not a strategy spec's hash",
                "give its sha256 hex or a prefix of at least 4 hex digits, as the table's"
                " `strategy` column shows it",
            )
    if not 1 <= last <= PAGE_MAX:
        raise CliError(f"--last {last} is out of range", f"give 1 to {PAGE_MAX:,}")
    request = SignalsRequest(
        market=market, unit=unit, mode=mode, action=action, strategy=strategy, last=last
    )
    with workstation() as ws:
        stored = ws.signals(request).root
    if as_json:
        emit_json([item.model_dump(mode="json") for item in stored])
        return
    if not stored:
        console.print("no stored signals" + (" match these filters" if _filtered(request) else ""))
        return
    zone = UTC if utc else KST
    table = Table(
        f"time ({'UTC' if utc else 'KST'})",
        "market",
        "unit",
        "action",
        "confidence",
        "source",
        "reason",
        "mode",
        "strategy",
    )
    colour = {"buy": "green", "sell": "red"}
    for s in stored:
        table.add_row(
            f"{s.ts.astimezone(zone):%Y-%m-%d %H:%M}",
            s.market,
            s.unit or "–",
            styled((s.action, colour.get(s.action, ""))),
            _confidence(s.confidence),
            s.source,
            s.reason or "",
            s.mode,
            (s.strategy or "–")[:12],
        )
    console.print(table)


def _filtered(request: object) -> bool:
    return any(
        getattr(request, name) is not None
        for name in ("market", "unit", "mode", "action", "strategy")
    )
