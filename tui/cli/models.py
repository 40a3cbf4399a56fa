"""`upquant models ...`: the model registry (list, show, promote, rollback, alias, unalias,
history, delete, compare)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, UnitOpt, check, workstation
from tui.cli.render import CliError, console, emit_json, err, styled

models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model: id, name (newest version), name@version or name@<alias> (champion,"
        " challenger, shadow)."
    ),
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why; kept in the history.")]


def _num(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


@models_app.command("list")
def models_list(
    market: Annotated[str | None, typer.Option(help="Only this market.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered models with status and test metrics."""
    from engine.service.registry import ModelListRequest
    from engine.upbit.markets import check_market

    if market is not None:  # a filter is a market code too: krw-btc would match nothing
        check_market(market)
    with workstation() as ws:
        listed = ws.model_list(ModelListRequest(market=market))
    if as_json:
        emit_json([item.model_dump(mode="json") for item in listed.items])
        return
    table = Table(
        "id",
        "model",
        "kind",
        "market",
        "unit",
        "status",
        "aliases",
        "test acc",
        "test F1",
        "test return",
        "created (UTC)",
    )
    for r in listed.items:
        test = r.metrics.get("test", {})
        ret = r.metrics.get("trading_model", {}).get("total_return")
        table.add_row(
            str(r.id),
            r.ref,
            r.kind,
            r.market,
            r.unit,
            r.status,
            ", ".join(r.aliases) or "–",
            _num(test.get("accuracy")),
            _num(test.get("f1_macro")),
            "–" if ret is None else f"{ret:+.2%}",
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


# `models show`'s lines, in order (a field that is null is left out)
SHOWN = (
    "ref",
    "id",
    "kind",
    "market",
    "unit",
    "status",
    "aliases",
    "created_at",
    "description",
    "artifact",
    "sha256",
    "size",
    "integrity",
    "feature_spec_hash",
    "label_spec",
    "params",
    "search_space",
    "tags",
)


@models_app.command("show")
def models_show(model: ModelArg, as_json: JsonOpt = False) -> None:
    """One model: specs, parameters, artifact (verified), metrics."""
    from engine.service.registry import ModelShowRequest

    with workstation() as ws:
        details = ws.model_show(ModelShowRequest(model=model))
    data = details.model_dump(mode="json")
    if as_json:
        emit_json(data)
        return
    for key in SHOWN:
        if data[key] is not None and data[key] != []:
            console.print(styled((key, "bold"), f": {data[key]}"), highlight=False)
    table = Table("split", "metric", "value")
    for split, named in details.metrics.items():
        for name, value in named.items():
            table.add_row(split, name, _num(value))
    console.print(table)


@models_app.command("promote")
def models_promote(model: ModelArg) -> None:
    """Make MODEL the champion of its market/unit (after verifying its artifact)."""
    from engine.service.registry import ModelRefRequest

    with workstation() as ws:
        moved = ws.model_promote(ModelRefRequest(model=model))
    console.print(f"{moved.model} is now the champion of {moved.market} unit {moved.unit}")


@models_app.command("rollback")
def models_rollback(
    market: Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC.")],
    unit: UnitOpt = "1",
    reason: ReasonOpt = None,
) -> None:
    """Move the champion alias of MARKET/UNIT back to its previous holder."""
    from engine.service.registry import RollbackRequest

    unit = check(market, unit)
    with workstation() as ws:
        moved = ws.model_rollback(RollbackRequest(market=market, unit=unit, reason=reason))
    console.print(f"{moved.previous} rolled back; {moved.model} is the champion again")


AliasArg = Annotated[
    Literal["champion", "challenger", "shadow"],
    typer.Argument(help="champion (promote), challenger or shadow."),
]


@models_app.command("alias")
def models_alias(
    model: ModelArg, alias: AliasArg, reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Give MODEL the ALIAS of its market/unit (artifact verified first): champion is taken
    from its holder; challenger and shadow are the model's own (it releases the alias it
    held). Every move is kept in `upquant models history`."""
    from engine.service.registry import ModelAliasRequest

    with workstation() as ws:
        moved = ws.model_alias(ModelAliasRequest(model=model, alias=alias, reason=reason))
    if as_json:
        emit_json(moved.model_dump(mode="json"))
        return
    if not moved.events:
        console.print(f"{moved.model} is already the {alias} of {moved.market} unit {moved.unit}")
        return
    taken = f" (from {moved.previous})" if moved.previous else ""
    article = "the" if alias == "champion" else "a"
    console.print(
        f"{moved.model} is now {article} {alias} of {moved.market} unit {moved.unit}{taken}",
        highlight=False,
    )


@models_app.command("unalias")
def models_unalias(
    model: ModelArg,
    alias: Annotated[
        Literal["challenger", "shadow"],
        typer.Argument(help="challenger or shadow (champion only moves: promote or rollback)."),
    ],
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take ALIAS (challenger or shadow) from MODEL."""
    from engine.service.registry import ModelUnaliasRequest

    with workstation() as ws:
        moved = ws.model_unalias(ModelUnaliasRequest(model=model, alias=alias, reason=reason))
    if as_json:
        emit_json(moved.model_dump(mode="json"))
        return
    console.print(
        f"{moved.model} is no longer a {alias} of {moved.market} unit {moved.unit}", highlight=False
    )


@models_app.command("history")
def models_history(
    market: Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC.")],
    unit: UnitOpt = "1",
    limit: Annotated[int | None, typer.Option(help="Only the newest N moves.", min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Who holds the aliases of MARKET/UNIT now, and every move (newest first): from, to,
    when, by whom (user, gate, schedule, drift) and why."""
    from engine.service.registry import AliasHistoryRequest

    unit = check(market, unit)
    with workstation() as ws:
        history = ws.alias_history(AliasHistoryRequest(market=market, unit=unit, limit=limit))
    if as_json:
        emit_json(history.model_dump(mode="json"))
        return
    holders = Table("alias", "model", "since (UTC)", title=f"{history.market} unit {history.unit}")
    for h in history.holders:
        holders.add_row(h.alias, h.model, f"{h.since:%Y-%m-%d %H:%M:%S}")
    console.print(holders)
    table = Table("#", "when (UTC)", "alias", "from", "to", "by", "reason")
    for e in history.events:
        table.add_row(
            str(e.id),
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.alias,
            e.previous or "–",
            e.model or "–",
            e.by,
            e.reason or "",
        )
    console.print(table)


@models_app.command("delete")
def models_delete(
    model: ModelArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model row, its metrics and (if no other row uses it) its artifact file and
    its unpacked copy in the cache."""
    from engine.service.registry import ModelRefRequest, ModelShowRequest

    with workstation() as ws:
        record = ws.model_show(ModelShowRequest(model=model, verify=False))
        if not yes and not typer.confirm(f"delete {record.ref} (id {record.id})?", err=True):
            raise typer.Abort()
        deleted = ws.model_delete(ModelRefRequest(model=str(record.id)))
    err.print(f"deleted {deleted.ref}" + (" and its artifact" if deleted.artifact_removed else ""))


@models_app.command("compare")
def models_compare(
    models: Annotated[list[str], typer.Argument(help="Two or more models.")],
    as_json: JsonOpt = False,
) -> None:
    """Test metrics of several models side by side, with their baselines."""
    from engine.service.registry import ModelCompareRequest

    if len(models) < 2:
        raise CliError(f"compare needs two or more models, got {len(models)}", "name another")
    with workstation() as ws:
        compared = ws.model_compare(ModelCompareRequest(models=models))
    if as_json:
        emit_json(compared.values)
        return
    table = Table("metric", *compared.columns)
    for name in compared.metrics:
        table.add_row(name, *(_num(compared.values[c].get(name)) for c in compared.columns))
    console.print(table)
