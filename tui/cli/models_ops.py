"""`upquant models settings` and `upquant models drift`: a market/unit's model-operation
settings (the promotion gate, champion expiry, the dissimilarity gate, retraining) and its
drift (performance drift events, each model's newest feature drift). Registered on
`models_app` by import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from tui.cli.models import models_app
from tui.cli.options import JsonOpt, UnitOpt, check, workstation
from tui.cli.render import CliError, console, emit_json

if TYPE_CHECKING:
    from engine.service.monitoring import DriftAnswer, OpsSettingsAnswer

__all__ = ["models_app"]

MarketArg = Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC.")]


def _flag(name: str, help_text: str) -> Any:
    return typer.Option(f"--{name}/--no-{name}", help=help_text, show_default=False)


@models_app.command("settings")
def models_settings(
    market: MarketArg,
    unit: UnitOpt = "1",
    auto_promote: Annotated[
        bool | None,
        _flag("auto-promote", "The promotion gate promotes by itself (else it recommends)."),
    ] = None,
    max_age: Annotated[
        float | None,
        typer.Option(
            "--max-age",
            help="A champion trained on data older than HOURS stops deciding (the rule decides).",
            metavar="HOURS",
        ),
    ] = None,
    no_max_age: Annotated[
        bool, typer.Option("--no-max-age", help="Champions never expire.")
    ] = False,
    ood_gate: Annotated[
        bool | None,
        _flag("ood-gate", "Inputs outside the training distribution go to the rule."),
    ] = None,
    ood_max_share: Annotated[
        float | None,
        typer.Option(
            "--ood-max-share",
            help="Out of distribution: more than this share (0-1] of features outside the"
            " training range.",
        ),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(help="Retrain daily, weekly, monthly or every N hours (e.g. 6h)."),
    ] = None,
    no_schedule: Annotated[
        bool, typer.Option("--no-schedule", help="No scheduled retraining.")
    ] = False,
    retrain_on_drift: Annotated[
        bool | None,
        _flag("retrain-on-drift", "A performance drift event starts a retrain."),
    ] = None,
    min_resolved: Annotated[
        int | None, typer.Option(help="Gate: resolved candles both models predicted, at least.")
    ] = None,
    min_trades: Annotated[
        int | None, typer.Option(help="Gate: the challenger's acted trades, at least.")
    ] = None,
    dm_level: Annotated[
        float | None, typer.Option(help="Gate: the one-sided Diebold–Mariano p-value, at most.")
    ] = None,
    dsr_level: Annotated[
        float | None, typer.Option(help="Gate: the deflated Sharpe ratio, at least.")
    ] = None,
    drawdown_margin: Annotated[
        float | None,
        typer.Option(help="Gate: max drawdown worse than the champion's by at most this."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show MARKET/UNIT's model-operation settings; with options, change those (the others
    are kept) and show the result."""
    from pydantic import ValidationError

    from engine.service.monitoring import OpsSettingsRequest, OpsSettingsSetRequest

    unit = check(market, unit)
    changes = {
        "auto_promote": auto_promote,
        "max_age_hours": max_age,
        "ood_gate": ood_gate,
        "ood_max_share": ood_max_share,
        "schedule": schedule,
        "retrain_on_drift": retrain_on_drift,
        "min_resolved": min_resolved,
        "min_trades": min_trades,
        "dm_level": dm_level,
        "dsr_level": dsr_level,
        "drawdown_margin": drawdown_margin,
    }
    given: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
    for option, value in (("max-age", max_age), ("schedule", schedule)):
        if value is not None and (no_max_age if option == "max-age" else no_schedule):
            raise CliError(f"give --{option} or --no-{option}, not both")
    if no_max_age:
        given["no_max_age"] = True
    if no_schedule:
        given["no_schedule"] = True
    try:
        update = (
            OpsSettingsSetRequest.model_validate({"market": market, "unit": unit, **given})
            if given
            else None
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = first["loc"][0] if first["loc"] else ""
        option = {"max_age_hours": "max-age"}.get(str(where), str(where).replace("_", "-"))
        prefix = f"--{option}: " if option else ""
        raise CliError(
            f"{prefix}{first['msg'].removeprefix('Value error, ')}",
            "see `upquant models settings --help`",
        ) from None
    with workstation() as ws:
        answer = (
            ws.ops_settings_set(update)
            if update is not None
            else ws.ops_settings(OpsSettingsRequest(market=market, unit=unit))
        )
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    _show_settings(answer)


def _show_settings(answer: OpsSettingsAnswer) -> None:
    s, d = answer.settings, answer.defaults
    title = f"{answer.market} unit {answer.unit}" + ("" if answer.stored else " (defaults)")
    table = Table("setting", "value", "default", title=title)

    def row(name: str, value: object, default: object) -> None:
        shown, base = _text(value), _text(default)
        table.add_row(name, Text(shown, style="" if shown == base else "bold"), base)

    row("auto promote", s.auto_promote, d.auto_promote)
    row("max age (h)", s.max_age_hours, d.max_age_hours)
    row("OOD gate", s.ood_gate, d.ood_gate)
    row("OOD max share", s.ood_max_share, d.ood_max_share)
    row("schedule", s.schedule, d.schedule)
    row("retrain on drift", s.retrain_on_drift, d.retrain_on_drift)
    for name in ("min_resolved", "min_trades", "dm_level", "dsr_level", "drawdown_margin"):
        row(f"gate {name.replace('_', ' ')}", getattr(s.gate, name), getattr(d.gate, name))
    console.print(table)


def _text(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


@models_app.command("drift")
def models_drift(
    market: MarketArg,
    unit: UnitOpt = "1",
    model: Annotated[
        str | None, typer.Option(help="Only this model (id, name@version, name@champion).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many newest events.", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """MARKET/UNIT's performance drift events (ADWIN / Page–Hinkley on each model's resolved
    correctness and trade PnL), newest first, and each model's newest feature drift (PSI,
    KS; PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift; * above 0.2). Feature drift is
    recorded by the live engine or `POST /api/v1/ml-models/{id}/feature-drift`."""
    from engine.service.monitoring import DriftRequest

    unit = check(market, unit)
    with workstation() as ws:
        answer = ws.drift_events(DriftRequest(market=market, unit=unit, model=model, limit=limit))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    _show_drift(answer)


def _show_drift(answer: DriftAnswer) -> None:
    events = Table(
        "#",
        "candle (UTC)",
        "model",
        "stream",
        "detector",
        "before",
        "after",
        "seen",
        "action",
        "detail",
        title=f"{answer.market} unit {answer.unit}: drift events",
    )
    for e in answer.events:
        pnl = e.stream == "pnl"
        events.add_row(
            str(e.id),
            f"{e.ts:%Y-%m-%d %H:%M}",
            e.model or f"#{e.model_id}",
            e.stream,
            e.detector,
            _mean(e.before_mean, pnl),
            _mean(e.after_mean, pnl),
            "–" if e.observations is None else f"{e.observations:,}",
            e.action or "–",
            e.detail or "",
        )
    if answer.events:
        console.print(events)
    else:
        console.print(f"no drift events for {answer.market} unit {answer.unit}", highlight=False)
    for drift in answer.feature_drift:
        table = Table(
            "feature",
            "PSI",
            "KS",
            title=f"{drift.model or f'#{drift.model_id}'}: feature drift up to"
            f" {drift.ts:%Y-%m-%d %H:%M} UTC"
            + (f" ({len(drift.flagged)} flagged)" if drift.flagged else ""),
        )
        for f in drift.features:
            mark = " *" if f.flagged else ""
            table.add_row(
                f.feature,
                ("–" if f.psi is None else f"{f.psi:.3f}") + mark,
                "–" if f.ks is None else f"{f.ks:.3f}",
            )
        console.print(table)


def _mean(value: float | None, pnl: bool) -> str:
    if value is None:
        return "–"
    return f"{value:+.3%}" if pnl else f"{value:.3f}"
