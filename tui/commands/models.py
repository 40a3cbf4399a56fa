"""`upquant models ...`: the model registry."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from tui.commands.common import JsonOpt, connect, console

models_app = typer.Typer(help="The model registry.", no_args_is_help=True)


@models_app.command("list")
def models_list(
    market: Annotated[str | None, typer.Option(help="Only this market.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered models with status and test metrics."""
    from store.registry import list_models, model_metrics

    with connect() as con:
        records = list_models(con, market)
        metrics = {r.id: model_metrics(con, r.id) for r in records}
    if as_json:
        console.print_json(
            json.dumps(
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
        )
        return
    table = Table(
        "id", "model", "kind", "market", "unit", "status", "test acc", "test F1", "created (UTC)"
    )
    for r in records:
        test = metrics[r.id].get("test", {})
        table.add_row(
            str(r.id),
            r.ref,
            r.kind,
            r.market,
            r.unit,
            r.status,
            f"{test.get('accuracy', float('nan')):.4f}",
            f"{test.get('f1_macro', float('nan')):.4f}",
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)
