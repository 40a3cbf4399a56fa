"""`upquant evaluate MODEL`: held-out metrics with baselines, calibration, importance; or
walk-forward retraining with mean ± std."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, connect, parse_time
from tui.cli.render import console, emit_json, styled, warn


def _num(value: object) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "–"
    return f"{value:.4f}"


def evaluate(
    model: Annotated[str, typer.Argument(help="Model: name, name@version or id.")],
    start: Annotated[str | None, typer.Option("--from", help="First candle (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End, exclusive (UTC, ISO).")] = None,
    walk_forward: Annotated[
        bool, typer.Option("--walk-forward", help="Retrain per walk-forward fold.")
    ] = False,
    folds: Annotated[int, typer.Option(help="Walk-forward folds.")] = 5,
    threshold: Annotated[
        float, typer.Option(help="Confidence the trading report acts on, in [0, 1].")
    ] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a registered model on held-out data (its test part by default) beside the baselines."""
    from engine.params import check_confidence
    from engine.training.evaluation import evaluate_model, walk_forward_evaluate

    check_confidence(threshold)  # typer takes any float, NaN included
    with connect() as con:
        if walk_forward:
            wf = walk_forward_evaluate(con, model, folds, threshold=threshold)
        else:
            ev = evaluate_model(
                con,
                model,
                parse_time(start, "--from") if start else None,
                parse_time(end, "--to") if end else None,
                threshold=threshold,
            )
    if walk_forward:
        if as_json:
            emit_json(
                {
                    "model": wf.model,
                    "folds": [{k: _json(v) for k, v in f.items()} for f in wf.folds],
                    "mean": {k: _json(v) for k, v in wf.mean.items()},
                    "std": {k: _json(v) for k, v in wf.std.items()},
                }
            )
            return
        table = Table(
            f"{wf.model}, {len(wf.folds)} folds",
            "mean ± std",
            *(f"fold {int(f['fold'])}" for f in wf.folds),
        )
        for key in wf.mean:
            table.add_row(
                key, f"{wf.mean[key]:.4f} ± {wf.std[key]:.4f}", *(_num(f[key]) for f in wf.folds)
            )
        console.print(table)
        return
    if ev.note:
        warn(ev.note)
    if as_json:
        emit_json(
            {
                "model": ev.model,
                "note": ev.note,
                "rows": ev.rows,
                "first": str(ev.first),
                "last": str(ev.last),
                "overlaps_training": ev.overlaps_training,
                "metrics": ev.metrics,
                "trading": {k: {m: _json(v) for m, v in d.items()} for k, d in ev.trading.items()},
                "reliability": None
                if ev.reliability is None
                else ev.reliability.to_dict("records"),
                "confusion": None if ev.confusion is None else ev.confusion.to_dict(),
                "importance": ev.importance,
            }
        )
        return
    console.print(
        styled(
            (ev.model, "bold"),
            f" on {ev.rows:,} rows, {ev.first:%Y-%m-%d %H:%M} – {ev.last:%Y-%m-%d %H:%M} UTC",
        )
    )
    if ev.overlaps_training:
        console.print("warning: the range overlaps the model's training part", style="yellow")
    keys = sorted({k for d in ev.metrics.values() for k in d})
    table = Table("metric", *ev.metrics)
    for key in keys:
        table.add_row(key, *(_num(d.get(key)) for d in ev.metrics.values()))
    console.print(table)
    trading = Table("trading, after fees", "total return", "Sharpe", "max drawdown", "trades")
    for name, d in ev.trading.items():
        trading.add_row(
            name,
            f"{d['total_return']:+.2%}",
            _num(d["sharpe"]),
            f"{d['max_drawdown']:.2%}",
            f"{d['trades']:,.0f}",
        )
    console.print(trading)
    if ev.reliability is not None:
        rel = Table("confidence bin", "rows", "mean confidence", "accuracy", "gap")
        for row in ev.reliability.itertuples(index=False):
            rel.add_row(
                row.bin,
                f"{row.rows:,}",
                _num(row.confidence),
                _num(row.accuracy),
                f"{row.gap:+.4f}",
            )
        console.print(rel)
    if ev.confusion is not None:
        console.print(ev.confusion.to_string())
    if ev.importance:
        imp = Table("feature", "importance (gain share)")
        for name, value in ev.importance:
            imp.add_row(name, f"{value:.4f}")
        console.print(imp)


def _json(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, int | float) else str(value)
