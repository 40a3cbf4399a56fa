"""`upquant predict MODEL MARKET`: batch inference over stored candles, stored in `predictions`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tui.cli.options import MarketArg, connect, parse_time
from tui.cli.render import console, warn


def predict(
    model: Annotated[str, typer.Argument(help="Model: name, name@version or id.")],
    market: MarketArg,
    start: Annotated[str | None, typer.Option("--from", help="First candle (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End, exclusive (UTC, ISO).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write them to this .parquet or .csv.")
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Confidence for the `action` column, in [0, 1].")
    ] = 0.5,
) -> None:
    """Predict every stored candle in the range (vectorised) and store the probabilities."""
    from engine.params import check_confidence
    from engine.training.batch import predict_range
    from engine.upbit.markets import check_market

    check_market(market)
    check_confidence(threshold)  # typer takes any float, NaN included

    with connect() as con:
        result = predict_range(
            con,
            model,
            market,
            parse_time(start, "--from") if start else None,
            parse_time(end, "--to") if end else None,
            out=out,
            threshold=threshold,
        )
    if result.note:
        warn(result.note)
    frame = result.frame
    counts = frame["action"].value_counts()
    console.print(
        f"{result.model} on {result.market} {result.unit}: {len(frame):,} predictions"
        f" {frame['ts'].iloc[0]:%Y-%m-%d %H:%M} – {frame['ts'].iloc[-1]:%Y-%m-%d %H:%M} UTC,"
        f" stored {result.stored:,} · buy {counts.get('buy', 0):,} sell {counts.get('sell', 0):,}"
        f" hold {counts.get('hold', 0):,}" + (f" · written to {out}" if out else "")
    )
