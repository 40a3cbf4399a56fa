"""`upquant models ab` and `upquant models gate`: champion vs challengers (A/B from the shadow
record) and the promotion gate (issue 11). Registered on `models_app` by import."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tui.cli.models import models_app
from tui.cli.options import JsonOpt, UnitOpt, check, workstation
from tui.cli.render import console, emit_json

if TYPE_CHECKING:
    from engine.service.ab import ABReportInfo, ContenderInfo

__all__ = ["models_app"]

MarketArg = Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC.")]


def _num(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _live(live: dict[str, Any] | None, key: str, spec: str = ".4f") -> str:
    return "–" if live is None else _num(live.get(key), spec)


def _pair(e: Any, name: str, spec: str = ".4f") -> str:
    """The challenger's value / the champion's, on the paired candles."""
    if e is None:
        return "–"
    return f"{_num(getattr(e, f'challenger_{name}'), spec)} / {_num(getattr(e, f'champion_{name}'), spec)}"


def _row(c: ContenderInfo) -> list[str]:
    e = c.evidence
    return [
        c.model,
        c.role,
        _live(c.live, "n_resolved", "d"),
        _live(c.live, "accuracy"),
        _live(c.live, "log_loss"),
        _live(c.live, "own_pnl_after_fees", ".2%"),
        "–" if e is None else str(e.candles),
        _pair(e, "log_loss", ".3f"),
        "–" if e is None else f"{e.challenger_trades} / {e.champion_trades}",
        _pair(e, "return", ".2%"),
        "–" if c.gate is None else _num(c.gate.dm_p_value, ".3g"),
        "–" if c.gate is None else _num(c.gate.deflated_sharpe, ".3f"),
        "champion" if c.gate is None else c.gate.verdict,
    ]


def render_report(report: ABReportInfo) -> None:
    """The side-by-side table, then each challenger's (and shadow's) verdict and reason."""
    table = Table(
        "model",
        "role",
        "live n",
        "live acc",
        "live loss",
        "live PnL",
        "paired",
        "loss vs champ.",
        "trades vs champ.",
        "return vs champ.",
        "DM p",
        "DSR",
        "verdict",
        title=f"{report.market} unit {report.unit}: champion vs challengers on the same candles",
    )
    contenders = [report.champion] if report.champion else []
    for c in [*contenders, *report.challengers, *report.shadows]:
        table.add_row(*_row(c))
    console.print(table)
    auto = "on (the gate promotes by itself)" if report.auto_promote else "off (recommendations)"
    say(
        f"auto-promotion {auto}; {report.n_candidates} models tried as challenger (the deflated"
        " Sharpe's trials)"
    )
    for c in [*report.challengers, *report.shadows]:
        if c.gate is None:
            continue
        shadow = " (shadow: shown, never promoted)" if c.role == "shadow" else ""
        look = ""
        if c.look is not None:
            look = f" [look {c.look.index}: first {c.look.candles} candles]"
        say(f"{c.model} {c.gate.verdict}{shadow}{look}: {c.gate.reason}")
        e = c.evidence
        if e is None:
            continue
        left = [
            f"{count} {why}"
            for count, why in (
                (e.champion_unanswered, "candles without the champion's answer"),
                (e.challenger_unanswered, "without its answer"),
                (e.in_sample, "in a model's training split"),
                (e.other_roles, "of its rows, made in another role"),
            )
            if count
        ]
        if left:
            say("  left out: " + "; ".join(left))
        if e.note:
            say(f"  note: {e.note}")
    if report.note:
        say(report.note)
    if report.recommended:
        say(f"the gate recommends {report.recommended}")


def say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


@models_app.command("ab")
def models_ab(market: MarketArg, unit: UnitOpt = "1", as_json: JsonOpt = False) -> None:
    """Champion vs challengers of MARKET/UNIT side by side: live metrics, the shadow record on
    the same candles (log-loss, trades, returns after fees) and each challenger's verdict from
    the promotion gate (promote / keep / insufficient) with its reason."""
    from engine.service.ab import ABRequest

    unit = check(market, unit)
    with workstation() as ws:
        report = ws.model_ab(ABRequest(market=market, unit=unit))
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    render_report(report)


@models_app.command("gate")
def models_gate(market: MarketArg, unit: UnitOpt = "1", as_json: JsonOpt = False) -> None:
    """Run the promotion gate of MARKET/UNIT now: with auto-promotion on, the best challenger
    it promotes becomes champion (kept in `upquant models history`, by gate); otherwise it
    says which it recommends."""
    from engine.service.ab import ABRequest

    unit = check(market, unit)
    with workstation() as ws:
        run = ws.gate_run(ABRequest(market=market, unit=unit))
    if as_json:
        emit_json(run.model_dump(mode="json"))
        return
    render_report(run.report)
    say(run.text)
