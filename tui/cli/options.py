"""What the commands share on the way in: option types, parsing of times, markets and units,
and the store connection a command opens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, cast

import typer

from tui.cli.render import CliError

if TYPE_CHECKING:
    import duckdb

    from engine.service import Workstation

MarketArg = Annotated[str, typer.Argument(help="Upbit market code, e.g. KRW-BTC.")]
UnitOpt = Annotated[
    str, typer.Option("--unit", "-u", help="Candle unit: minutes 1,3,5,10,15,30,60,240 or D.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
]


def connect() -> duckdb.DuckDBPyConnection:
    """The store under $UPQUANT_HOME; imported on use, so `--help` never loads DuckDB's store."""
    from store.db import connect as open_store

    return open_store()


def workstation() -> Workstation:
    """The Workstation a command calls (use it as a context manager, so it is closed when
    the command is done): the running server's HTTP client when `upquant serve` owns this
    home's store, else in process, opening the store itself. UPQUANT_SERVER=off forces in
    process."""
    import os

    if os.environ.get("UPQUANT_SERVER", "").lower() != "off":
        from tui.client import server_client

        remote = server_client()
        if remote is not None:  # the same operations by name, over HTTP
            return cast("Workstation", remote)
    from engine.service import Workstation

    return Workstation()


def parse_time(text: str, option: str) -> datetime:
    """An ISO date/time given to `option`; naive times are UTC."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{option} {text!r} is not a date/time",
            "use ISO format, e.g. 2025-09-01 or 2025-09-01T12:00Z",
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def check(market: str | None, unit: str) -> str:
    """The market code (when given) checked, and the unit in its canonical spelling."""
    from engine.upbit.markets import check_market, check_unit

    if market is not None:
        check_market(market)
    return check_unit(unit)
