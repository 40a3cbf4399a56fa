"""`upquant evaluate MODEL`: held-out metrics with baselines, calibration, importance; or
walk-forward retraining with mean ± std.

A walk-forward is a job of the store's owner (the server, or this command when none runs):
the command starts it, follows its run (a progress bar of folds on a terminal) and prints
its result; Ctrl-C (or SIGTERM) cancels the run and exits 130."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, parse_time, workstation
from tui.cli.render import CliError, console, emit_json, styled, warn


def _num(value: object) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "–"
    return f"{value:.4f}"


def evaluate(
    model: Annotated[str, typer.Argument(help="Model: id, name, name@version or name@champion.")],
    start: Annotated[str | None, typer.Option("--from", help="First candle (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End, exclusive (UTC, ISO).")] = None,
    walk_forward: Annotated[
        bool,
        typer.Option(
            "--walk-forward",
            help="Retrain per walk-forward fold, as a job (its run stored; Ctrl-C cancels it).",
        ),
    ] = False,
    folds: Annotated[int, typer.Option(help="Walk-forward folds.")] = 5,
    threshold: Annotated[
        float, typer.Option(help="Confidence the trading report acts on, in [0, 1].")
    ] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a registered model on held-out data (its test part by default) beside the baselines."""
    from engine.params import check_confidence
    from engine.service.evaluation import EvaluateRequest

    check_confidence(threshold)  # typer takes any float, NaN included
    if walk_forward and (start or end):
        raise CliError("--walk-forward uses the whole history", "leave --from and --to out")
    if walk_forward and not 2 <= folds <= 50:
        raise CliError(f"--folds {folds} is out of range", "give 2 to 50 folds")
    request = EvaluateRequest(
        model=model,
        start=parse_time(start, "--from") if start else None,
        end=parse_time(end, "--to") if end else None,
        walk_forward=walk_forward,
        folds=folds,
        threshold=threshold,
    )
    with workstation() as ws:
        if walk_forward:
            result = _follow(ws, ws.evaluate(request.model_copy(update={"wait": 0.0})), as_json)
        else:
            result = ws.evaluate(request)
    if result.walk_forward is not None:
        wf = result.walk_forward
        if as_json:
            emit_json(wf.model_dump(mode="json"))
            return
        table = Table(
            f"{wf.model}, {len(wf.folds)} folds",
            "mean ± std",
            *(f"fold {int(f['fold'] or 0)}" for f in wf.folds),
        )
        for key in wf.mean:
            table.add_row(
                key,
                f"{_num(wf.mean[key])} ± {_num(wf.std[key])}",
                *(_num(f[key]) for f in wf.folds),
            )
        console.print(table)
        return
    ev = result.held_out
    assert ev is not None  # mode "held_out"
    if ev.note:
        warn(ev.note)
    if as_json:
        emit_json(ev.model_dump(mode="json"))
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
            _fmt(d["total_return"], "{:+.2%}"),
            _num(d["sharpe"]),
            _fmt(d["max_drawdown"], "{:.2%}"),
            _fmt(d["trades"], "{:,.0f}"),
        )
    console.print(trading)
    if ev.reliability is not None:
        rel = Table("confidence bin", "rows", "mean confidence", "accuracy", "gap")
        for row in ev.reliability:
            rel.add_row(
                row.bin,
                f"{row.rows:,}",
                _num(row.confidence),
                _num(row.accuracy),
                _fmt(row.gap, "{:+.4f}"),
            )
        console.print(rel)
    if ev.confusion is not None:
        import pandas as pd

        confusion = pd.DataFrame(ev.confusion).rename_axis(index="true", columns="predicted")
        console.print(confusion.to_string())
    if ev.importance:
        imp = Table("feature", "importance (gain share)")
        for name, value in ev.importance:
            imp.add_row(name, f"{value:.4f}")
        console.print(imp)


def _follow(ws: Any, started: Any, as_json: bool) -> Any:
    """Poll walk-forward run `started.run` until it ends: the finished result, or the run's
    error; Ctrl-C (or SIGTERM) cancels the run and stops the command as before."""
    import time

    from engine.service import ServiceError
    from engine.service.evaluation import EvaluationRunRequest
    from engine.training.fit import Progress
    from store.db import interrupted
    from tui.cli.train import POLL_S, _progress_display

    run = started.run
    if not started.pending or run is None:
        return started
    try:
        with _progress_display(not as_json) as show:
            while True:
                try:
                    status = ws.evaluation_status(EvaluationRunRequest(run=run))
                except Exception as exc:
                    if interrupted(exc):  # the signal arrived inside the status query
                        raise KeyboardInterrupt from exc
                    raise
                if show is not None and status.folds_total:
                    show(Progress("fold", status.folds_done, status.folds_total, {}))
                if status.status == "finished" and status.result is not None:
                    return started.model_copy(
                        update={"walk_forward": status.result, "status": "finished"}
                    )
                if status.status == "failed":
                    raise ServiceError(status.error or f"evaluation run {run} failed", status.hint)
                if status.status == "interrupted":
                    raise ServiceError(
                        f"evaluation run {run} was interrupted: {status.error}",
                        "evaluate it again",
                    )
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        ws.evaluation_cancel(EvaluationRunRequest(run=run, reason="stopped by Ctrl-C or a signal"))
        raise


def _fmt(value: object, spec: str) -> str:
    return spec.format(value) if isinstance(value, int | float) else "–"
