"""`upquant models ...`: the model registry (list, show, promote, rollback, delete, compare)."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, UnitOpt, check, connect
from tui.cli.render import console, emit_json, err, styled

models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
ModelArg = Annotated[str, typer.Argument(help="Model: name (newest version), name@version or id.")]


def _num(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


@models_app.command("list")
def models_list(
    market: Annotated[str | None, typer.Option(help="Only this market.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered models with status and test metrics."""
    from engine.upbit.markets import check_market
    from store.registry import list_models, model_metrics

    if market is not None:  # a filter is a market code too: krw-btc would match nothing
        check_market(market)
    with connect() as con:
        records = list_models(con, market)
        metrics = {r.id: model_metrics(con, r.id) for r in records}
    if as_json:
        emit_json(
            [
                {
                    "id": r.id,
                    "ref": r.ref,
                    "kind": r.kind,
                    "market": r.market,
                    "unit": r.unit,
                    "status": r.status,
                    "created_at": r.created_at.isoformat(),
                    "metrics": metrics[r.id],
                }
                for r in records
            ]
        )
        return
    table = Table(
        "id",
        "model",
        "kind",
        "market",
        "unit",
        "status",
        "test acc",
        "test F1",
        "test return",
        "created (UTC)",
    )
    for r in records:
        test = metrics[r.id].get("test", {})
        trading = metrics[r.id].get("trading_model", {})
        ret = trading.get("total_return")
        table.add_row(
            str(r.id),
            r.ref,
            r.kind,
            r.market,
            r.unit,
            r.status,
            _num(test.get("accuracy")),
            _num(test.get("f1_macro")),
            "–" if ret is None else f"{ret:+.2%}",
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@models_app.command("show")
def models_show(model: ModelArg, as_json: JsonOpt = False) -> None:
    """One model: specs, parameters, artifact (verified), metrics."""
    from engine.ops.promotion import artifact_integrity
    from store.registry import get_model, model_metrics

    with connect() as con:
        record = get_model(con, model)
        metrics = model_metrics(con, record.id)
    integrity = artifact_integrity(record)
    data = {
        "id": record.id,
        "ref": record.ref,
        "kind": record.kind,
        "market": record.market,
        "unit": record.unit,
        "status": record.status,
        "created_at": record.created_at.isoformat(),
        "artifact": record.artifact,
        "sha256": record.sha256,
        "size": record.size,
        "integrity": integrity,
        "feature_spec_hash": record.feature_spec_hash,
        "label_spec": record.label_spec,
        "params": {k: v for k, v in record.params.items() if k not in ("columns", "search")},
        "search_space": record.params.get("search", {}).get("space"),
        "tags": record.tags,
        "metrics": metrics,
    }
    if as_json:
        emit_json(data)
        return
    for key in (
        "ref",
        "id",
        "kind",
        "market",
        "unit",
        "status",
        "created_at",
        "artifact",
        "sha256",
        "size",
        "integrity",
        "feature_spec_hash",
        "label_spec",
        "params",
        "search_space",
        "tags",
    ):
        if data[key] is not None:
            console.print(styled((key, "bold"), f": {data[key]}"), highlight=False)
    table = Table("split", "metric", "value")
    for split, named in metrics.items():
        for name, value in named.items():
            table.add_row(split, name, _num(value))
    console.print(table)


@models_app.command("promote")
def models_promote(model: ModelArg) -> None:
    """Make MODEL the champion of its market/unit (after verifying its artifact)."""
    from engine.ops.promotion import promote

    with connect() as con:
        record = promote(con, model)
    console.print(f"{record.ref} is now the champion of {record.market} unit {record.unit}")


@models_app.command("rollback")
def models_rollback(
    market: Annotated[str, typer.Argument(help="Market, e.g. KRW-BTC.")], unit: UnitOpt = "1"
) -> None:
    """Demote the champion of MARKET/UNIT and restore the previous one."""
    from engine.ops.promotion import rollback

    unit = check(market, unit)
    with connect() as con:
        demoted, restored = rollback(con, market, unit)
    console.print(f"{demoted.ref} rolled back; {restored.ref} is the champion again")


@models_app.command("delete")
def models_delete(
    model: ModelArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model row, its metrics and (if no other row uses it) its artifact file and
    its unpacked copy in the cache."""
    from engine.ops.promotion import delete
    from store.registry import get_model

    with connect() as con:
        record = get_model(con, model)
        if not yes and not typer.confirm(f"delete {record.ref} (id {record.id})?", err=True):
            raise typer.Abort()
        orphan = delete(con, record)
    err.print(f"deleted {record.ref}" + (" and its artifact" if orphan else ""))


@models_app.command("compare")
def models_compare(
    models: Annotated[list[str], typer.Argument(help="Two or more models.")],
    as_json: JsonOpt = False,
) -> None:
    """Test metrics of several models side by side, with their baselines."""
    from engine.training.evaluation import compare_models

    with connect() as con:
        frame = compare_models(con, models)
    if as_json:
        emit_json(frame.to_dict())
        return
    table = Table("metric", *frame.columns)
    for name, row in frame.iterrows():
        table.add_row(str(name), *(_num(v) for v in row))
    console.print(table)
