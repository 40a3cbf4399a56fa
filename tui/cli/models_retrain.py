"""`upquant models retrain / retrains / online-update`: retrain a champion's configuration on
the newest candles, list the retrains, update a model on newly resolved candles; each result
is a challenger (engine.service.retraining). Registered on `models_app` by import."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.table import Table

from tui.cli.models import ModelArg, ReasonOpt, models_app
from tui.cli.options import JsonOpt, UnitOpt, check, workstation
from tui.cli.render import CliError, console, emit_json, err

__all__ = ["models_app"]


@models_app.command("retrain")
def models_retrain(
    market: Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC: its champion is retrained.")],
    unit: UnitOpt = "1",
    reason: ReasonOpt = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Follow the job to its end (Ctrl-C cancels it); --no-wait needs a running"
            " server, which owns the job.",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Retrain the champion of MARKET/UNIT: its configuration (features, labels, split with
    purge and embargo, parameters) on the newest candles, as a training job. The model is
    registered as a challenger, never the champion: the promotion gate decides."""
    from engine.service import Workstation
    from engine.service.retraining import RetrainRequest
    from tui.cli.train import _follow, _progress_display, print_report, report_json

    unit = check(market, unit)
    with workstation() as ws:
        if not wait and isinstance(ws, Workstation):
            raise CliError(
                "--no-wait needs a running server: without one this command owns the job,"
                " and leaving it stops the job",
                "start one with `upquant serve`, or leave out --no-wait",
            )
        started = ws.model_retrain(RetrainRequest(market=market, unit=unit, reason=reason))
        if not as_json:
            source = f" ({started.source})" if started.source else ""
            candles = f"the newest {started.candles:,}" if started.candles else "all stored"
            err.print(
                f"retraining {started.champion}{source} on {candles} {started.market} unit"
                f" {started.unit} candles: run {started.run}",
                highlight=False,
            )
        if not wait:
            if as_json:
                emit_json(started.model_dump(mode="json"))
            else:
                console.print(
                    f"run {started.run} {started.status}; follow it with GET {started.status_url}",
                    highlight=False,
                )
            return
        with _progress_display(not as_json) as show:
            result = _follow(ws, started.run, show)
    if as_json:
        emit_json({**started.model_dump(mode="json"), "result": report_json(result)})
        return
    print_report(result)
    console.print(f"{result.model} is a challenger of {started.market} unit {started.unit}")


@models_app.command("retrains")
def models_retrains(
    market: Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC.")],
    unit: UnitOpt = "1",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The retrains of MARKET/UNIT, newest first: who asked (user, schedule, drift), why, and
    how each ended (the challenger it registered, or its error)."""
    from engine.service.retraining import RetrainListRequest

    unit = check(market, unit)
    with workstation() as ws:
        listed = ws.model_retrains(RetrainListRequest(market=market, unit=unit, limit=limit))
    if as_json:
        emit_json(listed.model_dump(mode="json"))
        return
    table = Table(
        "run", "asked (UTC)", "by", "reason", "champion", "status", "challenger / error",
        title=f"{listed.market} unit {listed.unit}",
    )  # fmt: skip
    for r in listed.items:
        table.add_row(
            str(r.run),
            f"{r.at:%Y-%m-%d %H:%M:%S}" if r.at else "–",
            r.by,
            r.reason or "",
            r.champion or "–",
            r.status,
            r.model or r.error or "",
        )
    console.print(table)


@models_app.command("online-update")
def models_online_update(
    model: ModelArg,
    rounds: Annotated[
        int | None,
        typer.Option(help="XGBoost: new boosting rounds (default 20).", min=1, max=1000),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Torch: fine-tuning epochs at lr/10 (default 2).", min=1, max=100),
    ] = None,
    after: Annotated[
        Literal["validation", "test"],
        typer.Option(
            help="Learn from rows after its validation period (its test part too; the new"
            " version is judged live) or only after its test part."
        ),
    ] = "validation",
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Update MODEL on the candles resolved since its validation period (XGBoost: more
    boosting rounds from its booster; torch: fine-tuning from its weights). The result is a
    new version with MODEL as its parent, a challenger; roll it back by taking that alias
    (`upquant models unalias NEW challenger`)."""
    from engine.service.retraining import OnlineUpdateRequest

    with workstation() as ws:
        updated = ws.model_online_update(
            OnlineUpdateRequest(
                model=model,
                rounds=rounds,
                epochs=epochs,
                after=after,
                until=None,
                reason=reason,
            )
        )
    if as_json:
        emit_json(updated.model_dump(mode="json"))
        return
    how = f"{updated.rounds} rounds" if updated.rounds else f"{updated.epochs} epochs"
    console.print(
        f"{updated.model} (id {updated.id}): {updated.parent} updated with {how} on"
        f" {updated.rows:,} resolved rows {updated.update_from:%Y-%m-%d %H:%M} –"
        f" {updated.update_to:%Y-%m-%d %H:%M} UTC; now a challenger of {updated.market}"
        f" unit {updated.unit}",
        highlight=False,
    )
