"""Market codes and candle units as Upbit writes them, validated once for every face."""

from __future__ import annotations

import re
from collections.abc import Iterable

from store.candles import unit_minutes

UNITS = ("1", "3", "5", "10", "15", "30", "60", "240", "D")
# Upbit's candle field (REST and WebSocket) for each canonical candle column.
CANDLE_FIELDS = {
    "open": "opening_price",
    "high": "high_price",
    "low": "low_price",
    "close": "trade_price",
    "volume": "candle_acc_trade_volume",
    "value": "candle_acc_trade_price",
}
_MARKET = re.compile(r"^(KRW|BTC|USDT)-[A-Z0-9]{1,15}$")


def check_market(market: str) -> str:
    if not _MARKET.match(market):
        raise ValueError(
            f"market {market!r} is not an Upbit market code; write it as QUOTE-BASE, e.g. KRW-BTC"
        )
    return market


def check_unit(unit: str | int) -> str:
    text = str(unit).upper() if str(unit).upper() == "D" else str(unit)
    if text not in UNITS:
        raise ValueError(f"candle unit {unit!r} is not supported; use one of {', '.join(UNITS)}")
    return text


def split_watch(entries: Iterable[str], unit: str) -> tuple[list[str], dict[str, str]]:
    """A watchlist's entries (MARKET, or MARKET:UNIT for a market at its own unit) as the
    markets in order and the units of those not at `unit`; ValueError naming a bad entry."""
    markets: list[str] = []
    units: dict[str, str] = {}
    for entry in entries:
        name, _, own = entry.partition(":")
        name = check_market(name.strip())
        if own.strip():
            own = check_unit(own.strip().removesuffix("m"))
            if units.get(name, own) != own:
                raise ValueError(f"{name} is watched at two units: {units[name]} and {own}")
            if own != unit:
                units[name] = own
        if name not in markets:
            markets.append(name)
    return markets, units


# A thin alias of the one bucket width, store.candles.unit_minutes, kept only because
# engine/research/features imports it by this name; every other module uses unit_minutes.
unit_timedelta_minutes = unit_minutes
