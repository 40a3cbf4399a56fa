"""`upquant models metrics MODEL [--last N] [--json]`: a model's stored metrics (test,
validation) and its live ones (engine.ops.live_metrics over its newest live predictions:
accuracy, F1, log-loss, reliability bins, hit rate, paper PnL after fees, latency,
fallbacks). Registered on `models_app` by import."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tui.cli.models import ModelArg, models_app
from tui.cli.options import JsonOpt, workstation
from tui.cli.render import console, emit_json, styled

if TYPE_CHECKING:
    from engine.service.outcomes import LiveMetricsInfo

__all__ = ["models_app"]


def _num(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None or math.isnan(value) else format(value, spec)


def _live_lines(live: LiveMetricsInfo) -> list[tuple[str, str]]:
    window = "–"
    if live.first_ts is not None and live.last_ts is not None:
        window = f"{live.first_ts:%Y-%m-%d %H:%M} → {live.last_ts:%Y-%m-%d %H:%M} UTC"
    reasons = ", ".join(f"{k} {v}" for k, v in live.fallback_reasons.items())
    rows = (
        f"{live.n_predictions:,} ({live.n_resolved:,} resolved, {live.n_pending:,} pending,"
        f" {live.n_scored:,} scored)"
    )
    pnl = (
        f"{_num(live.pnl_after_fees, '+.4%')} (mean {_num(live.pnl_after_fees_mean, '+.4%')},"
        f" fee {live.fee:.2%} per side)"
    )
    own = (
        f"{live.own_signals:,} (hit rate {_num(live.own_hit_rate, '.1%')},"
        f" {live.own_trades:,} buys, PnL {_num(live.own_pnl_after_fees, '+.4%')})"
    )
    latency = (
        f"p50 {_num(live.latency_p50_ms, '.2f')} ms, p99 {_num(live.latency_p99_ms, '.2f')} ms"
    )
    return [
        ("window", window),
        ("predictions", rows),
        ("accuracy", _num(live.accuracy)),
        ("macro F1", _num(live.macro_f1)),
        ("log-loss", _num(live.log_loss)),
        ("ECE", _num(live.ece)),
        ("acted signals", f"{live.n_acted:,} ({live.n_acted_resolved:,} resolved)"),
        ("hit rate", _num(live.hit_rate, ".1%")),
        ("trades (buys)", f"{live.n_trades:,}"),
        ("PnL after fees", pnl),
        ("own signals", own),
        ("latency", latency),
        ("fallbacks", f"{live.fallbacks:,}" + (f" ({reasons})" if reasons else "")),
    ]


@models_app.command("metrics")
def models_metrics(
    model: ModelArg,
    last: Annotated[
        int, typer.Option("--last", min=1, help="Live metrics over the newest N live predictions.")
    ] = 500,
    as_json: JsonOpt = False,
) -> None:
    """A model's stored test/validation metrics and its live ones (calibration, latency)."""
    from engine.service.registry import ModelMetricsRequest

    with workstation() as ws:
        metrics = ws.model_metrics(ModelMetricsRequest(model=model, last=last))
    if as_json:
        emit_json(metrics.model_dump(mode="json"))
        return
    console.print(styled((metrics.model, "bold"), f" (id {metrics.model_id})"), highlight=False)
    stored = Table("metric", "test", "validation", title="stored")
    for name in sorted(set(metrics.test) | set(metrics.validation)):
        stored.add_row(name, _num(metrics.test.get(name)), _num(metrics.validation.get(name)))
    console.print(stored)
    live = metrics.live
    if live is None:
        console.print(
            f"live: no live predictions of {metrics.model} yet (they are logged while it holds"
            " an alias in a running live session: champion, challenger or shadow)",
            highlight=False,
        )
        return
    table = Table("live", "value", title=f"live (newest {last:,} rows)")
    for name, value in _live_lines(live):
        table.add_row(name, value)
    console.print(table)
    bins = Table("confidence bin", "count", "mean confidence", "accuracy", title="calibration")
    for b in live.calibration:
        bins.add_row(
            f"{b.lower:.1f}–{b.upper:.1f}", f"{b.count:,}", _num(b.confidence), _num(b.accuracy)
        )
    console.print(bins)
