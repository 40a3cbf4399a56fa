"""`upquant train KIND MARKET`: headless training with a printed report."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.table import Table

from tui.commands.common import JsonOpt, MarketArg, UnitOpt, check, connect, console, err


def train(
    kind: Annotated[str, typer.Argument(help="Model kind: xgboost.")],
    market: MarketArg,
    unit: UnitOpt = "1",
    horizon: Annotated[int, typer.Option(help="Label horizon in candles.")] = 10,
    threshold: Annotated[
        float, typer.Option(help="Forward log-return beyond which a candle is buy/sell.")
    ] = 0.001,
    n_estimators: Annotated[
        int, typer.Option(help="XGBoost boosting rounds (early stopping on validation).")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--no-promote", help="Make it champion (default: only if none yet)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on stored candles, evaluate it on the test part beside the majority baseline, register it."""
    from engine.labels import LabelSpec
    from engine.training import train_model

    unit = check(market, unit)
    spinner = (
        err.status(f"training {kind} on {market} {unit}m…") if err.is_terminal else nullcontext()
    )
    with connect() as con, spinner:
        report = train_model(
            con,
            kind,
            market,
            unit,
            label_spec=LabelSpec(horizon=horizon, threshold=threshold),
            params={"n_estimators": n_estimators, "seed": seed},
            promote=promote,
        )
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "model": report.model.ref,
                    "id": report.model.id,
                    "status": report.model.status,
                    "sha256": report.model.sha256,
                    "rows": report.rows,
                    "metrics": report.metrics,
                    "class_balance": report.class_balance,
                }
            )
        )
        return
    record = report.model
    console.print(
        f"[bold]{record.ref}[/] (id {record.id}, {record.status}) · {len(report.features)} features ·"
        f" rows train {report.rows['train']:,} / validation {report.rows['validation']:,} / test {report.rows['test']:,}"
    )
    balance = report.class_balance["test"]
    console.print("test class balance: " + ", ".join(f"{k} {v:.1%}" for k, v in balance.items()))
    table = Table("test part", "accuracy", "macro F1", "log-loss")
    for label, key in ((record.ref, "test"), ("majority-class baseline", "baseline_majority_test")):
        m = report.metrics[key]
        table.add_row(label, f"{m['accuracy']:.4f}", f"{m['f1_macro']:.4f}", f"{m['log_loss']:.4f}")
    console.print(table)
    console.print(
        f"artifact {record.artifact} (sha256 {record.sha256[:16]}…, {record.size:,} bytes)"
    )
