"""Where a model's held-out data starts: the start of its test part, recorded when it was
trained (`tags["test_from"]`). A backtest of its signals defaults to it, so nothing it trained
or was tuned on counts; an earlier start is allowed, with a warning that the result is partly
in-sample."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

    from engine.live.inference import LoadedModel


@dataclass(frozen=True)
class HeldOutStart:
    """The start to backtest model `ref` from, the warning to give (None: out of sample), and
    the loaded model with its load note, for `model_backtest(preloaded=...)`."""

    start: datetime | None
    warning: str | None
    preloaded: tuple[LoadedModel, str | None]


def held_out_start(
    con: duckdb.DuckDBPyConnection, ref: str, start: datetime | None
) -> HeldOutStart:
    """`start`, or the model's test part when None. The version that will run decides (a bare
    name whose newest artifact is bad runs the previous one), so it is loaded here."""
    import pandas as pd

    from engine.live.inference import load_ref

    loaded, note = load_ref(con, ref)
    record = loaded.record
    test_from = pd.Timestamp(record.tags["test_from"]) if record.tags else None
    warning = None
    if start is None and test_from is not None:
        start = test_from.to_pydatetime()
    elif test_from is not None and pd.Timestamp(start) < test_from:
        warning = (
            f"--from {start:%Y-%m-%d %H:%M} is before {record.ref}'s test part"
            f" ({test_from:%Y-%m-%d %H:%M}): the result is partly in-sample"
        )
    return HeldOutStart(start, warning, (loaded, note))
