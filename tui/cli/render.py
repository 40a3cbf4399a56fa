"""What every command module shares: consoles, option types, the store connection, parsing."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import duckdb
import typer
from rich.console import Console
from rich.text import Text

# Wide when piped, so tables and paths are not folded into unreadable columns. Markup is off:
# model names, paths, reasons and validation messages come from users and files, and text
# like `[/]` or `[low, high]` must print as written (a markup parser crashes on the first and
# swallows the second). Our own styling is explicit: `styled`, `warn`, Text(style=...).
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, markup=False)
# debug: the root command's --debug flag; signal: the signal that stopped the command
state: dict[str, Any] = {"debug": False, "signal": None}

MarketArg = Annotated[str, typer.Argument(help="Upbit market code, e.g. KRW-BTC.")]
UnitOpt = Annotated[
    str, typer.Option("--unit", "-u", help="Candle unit: minutes 1,3,5,10,15,30,60,240 or D.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
]


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and (text, style) pairs; no part is ever parsed as markup."""
    return Text.assemble(*parts)


def warn(message: str) -> None:
    """A `warning:` line on stderr; `message` is printed as written."""
    err.print(styled(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


class CliError(Exception):
    """A failure to report as one red line plus a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf, numpy's too) turned into None, and
    timestamps, paths and numpy scalars into plain JSON types, so that the output parses
    under strict JSON parsers (Python's `json.dumps` writes bare `NaN`, which they reject)."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [strict_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return strict_json(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return strict_json(tolist())
    isoformat = getattr(value, "isoformat", None)  # datetime, pandas Timestamp
    if callable(isoformat):
        text = isoformat()
        return None if text == "NaT" else text
    return str(value)


def emit_json(payload: Any) -> None:
    """Print `payload` as strict JSON on stdout: the one way a `--json` output is written."""
    text = json.dumps(strict_json(payload), indent=2, ensure_ascii=False, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class ReportedFailure(CliError):
    """A failure whose JSON report (with `error` and `hint`) is already on stdout: under
    `--json`, tui/cli.py main adds only the error line on stderr."""


def fail_json(payload: dict[str, Any], error: str, hint: str | None) -> NoReturn:
    """A failing `--json` command that has a report: the report with `error` and `hint` on
    stdout (strict JSON), the error line on stderr, exit 1."""
    emit_json({**payload, "error": error, "hint": hint})
    raise ReportedFailure(error, hint)


def connect() -> duckdb.DuckDBPyConnection:
    from store.db import connect as open_store

    return open_store()


def parse_time(text: str, option: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{option} {text!r} is not a date/time",
            "use ISO format, e.g. 2025-09-01 or 2025-09-01T12:00Z",
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def check(market: str | None, unit: str) -> str:
    from engine.upbit.markets import check_market, check_unit

    if market is not None:
        check_market(market)
    return check_unit(unit)
