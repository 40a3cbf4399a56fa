"""What the commands share on the way out: the consoles, styled text and warnings, strict
JSON, and failures reported as one `error:` line with a hint."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.text import Text

# Wide when piped, so tables and paths are not folded into unreadable columns. Markup is off:
# model names, paths, reasons and validation messages come from users and files, and text
# like `[/]` or `[low, high]` must print as written (a markup parser crashes on the first and
# swallows the second). Our own styling is explicit: `styled`, `warn`, Text(style=...).
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, markup=False)


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
    `--json`, tui/cli main adds only the error line on stderr."""


def fail_json(payload: dict[str, Any], error: str, hint: str | None) -> NoReturn:
    """A failing `--json` command that has a report: the report with `error` and `hint` on
    stdout (strict JSON), the error line on stderr, exit 1."""
    emit_json({**payload, "error": error, "hint": hint})
    raise ReportedFailure(error, hint)


def error_line(message: str) -> Text:
    """`error: message`, the word in red; the message printed as written."""
    return styled(("error:", "red"), " ", message)


def report_failure(line: Text, hint: str | None = None, *, as_json: bool = False) -> None:
    """One `error:` line and a `hint:` line on stderr; with `--json`, the same as a JSON object
    on stdout too, so a script reading stdout always gets JSON."""
    try:
        if as_json:
            emit_json({"error": line.plain.removeprefix("error: "), "hint": hint})
        err.print(line, highlight=False, soft_wrap=True)
        if hint:
            err.print(f"hint: {hint}", highlight=False, soft_wrap=True)
    except OSError:  # the terminal is gone (SIGHUP): the exit code still tells
        pass


def is_user_error(exc: BaseException) -> bool:
    """Our own exceptions and bad values are reported as one line; anything else is a bug."""
    module = type(exc).__module__.split(".")[0]
    return module in {"engine", "store", "models", "tui"} or isinstance(exc, (ValueError, KeyError))
