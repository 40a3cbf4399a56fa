"""How the workstation writes times, prices and amounts: one place, so every screen agrees.

Times are shown in KST (Upbit's exchange time, UTC+9) unless the user pressed the UTC key
(`app.utc`); stored times are UTC. Prices are written to Upbit's KRW tick (as many decimals
as the price's tick has: 0 from 100 KRW up, 1 from 10, 2 from 1, ...), amounts of KRW whole.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

KST = timezone(timedelta(hours=9), "KST")


def as_datetime(ts: datetime | pd.Timestamp | str) -> datetime:
    """A timezone-aware datetime of `ts` (naive values are UTC, as the store keeps them)."""
    import pandas as pd  # here: the CLI imports this module for its number formats

    value = pd.Timestamp(ts)
    if value.tzinfo is None:
        value = value.tz_localize(UTC)
    return value.to_pydatetime()


def fmt_time(
    ts: datetime | pd.Timestamp | str | None, *, utc: bool = False, fmt: str = "%m-%d %H:%M"
) -> str:
    """`ts` in KST (or UTC) as `fmt`; "-" for no time."""
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return "-"
    return as_datetime(ts).astimezone(UTC if utc else KST).strftime(fmt)


def zone(utc: bool) -> str:
    """The zone label to put in a column header or a title."""
    return "UTC" if utc else "KST"


def price_decimals(price: float) -> int:
    """Decimals of Upbit's KRW tick at `price` (engine.trading.ticks' table)."""
    from engine.trading.ticks import tick_size

    if not math.isfinite(price) or price <= 0:
        return 0
    tick = float(tick_size(price))
    return max(0, -math.floor(math.log10(tick) + 1e-9)) if tick < 1 else 0


def fmt_price(price: float | None) -> str:
    """A KRW price to its tick, with thousands separators ("-" for none)."""
    if price is None or not math.isfinite(price):
        return "-"
    return f"{price:,.{price_decimals(abs(price))}f}"


def fmt_krw(amount: float | None, *, signed: bool = False) -> str:
    """A KRW amount, whole won with separators; "+" before gains when `signed`."""
    if amount is None or not math.isfinite(amount):
        return "-"
    return f"{amount:+,.0f}" if signed else f"{amount:,.0f}"


def fmt_pct(value: float | None, *, signed: bool = True, digits: int = 2) -> str:
    """A fraction as a percentage (0.0123 -> "+1.23%")."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:+.{digits}f}%" if signed else f"{value * 100:.{digits}f}%"


def fmt_share(value: float | None) -> str:
    """A fraction of a whole (a win rate, a drawdown) as an unsigned percentage."""
    return fmt_pct(value, signed=False)


def fmt_ratio(value: float | None) -> str:
    """A ratio such as a Sharpe: two decimals."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def fmt_count(value: float | None) -> str:
    """A count, whole, with separators."""
    return "-" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def fmt_age(then: datetime | pd.Timestamp | str | None, now: datetime) -> str:
    """How long ago `then` was at `now`: 45s, 12m, 3h, 5d."""
    if then is None:
        return "-"
    seconds = max(0.0, (now - as_datetime(then)).total_seconds())
    for size, suffix in ((86_400, "d"), (3_600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{suffix}"
    return f"{int(seconds)}s"


def error_text(exc: BaseException) -> str:
    """What a screen shows for a failed operation: its message, then its hint (ServiceError,
    RemoteError and NoFacade carry one), never a traceback."""
    hint = getattr(exc, "hint", None)
    message = str(exc) or type(exc).__name__
    return f"{message} ({hint})" if hint else message
