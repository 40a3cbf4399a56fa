"""`upquant predict MODEL MARKET`: batch inference over stored candles, stored in `predictions`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tui.cli.options import MarketArg, parse_time, workstation
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
    import pandas as pd

    from engine.params import check_confidence
    from engine.service.prediction import StorePredictionsRequest
    from engine.upbit.markets import check_market
    from models import CLASSES

    check_market(market)
    check_confidence(threshold)  # typer takes any float, NaN included
    if out is not None and out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out {out} must end in .parquet or .csv")

    with workstation() as ws:
        result = ws.store_predictions(
            StorePredictionsRequest(
                model=model,
                market=market,
                start=parse_time(start, "--from") if start else None,
                end=parse_time(end, "--to") if end else None,
                threshold=threshold,
            )
        )
    if result.note:
        warn(result.note)
    frame = pd.DataFrame([row.model_dump() for row in result.rows])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["action"] = pd.Categorical(frame["action"], categories=list(CLASSES))
    if out is not None:  # written here: the file is the caller's, wherever the store is
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            frame.to_parquet(out, index=False)
        else:
            frame.to_csv(out, index=False)
    counts = frame["action"].value_counts()
    console.print(
        f"{result.model} on {result.market} {result.unit}: {len(frame):,} predictions"
        f" {frame['ts'].iloc[0]:%Y-%m-%d %H:%M} – {frame['ts'].iloc[-1]:%Y-%m-%d %H:%M} UTC,"
        f" stored {result.stored:,} · buy {counts.get('buy', 0):,} sell {counts.get('sell', 0):,}"
        f" hold {counts.get('hold', 0):,}" + (f" · written to {out}" if out else "")
    )
