"""Workstation operations that read what the store holds for a chart or a client: which
series are stored (`markets`), a page of one series' candles (`candles`), and the signals the
engine emitted (`signals`, newest first). Reads only; each is one query."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, operation

if TYPE_CHECKING:
    import pandas as pd

PAGE_MAX = 10_000
# a strategy spec's sha256 hex or a prefix of it: a malformed filter is refused (422 over
# HTTP), never answered with nothing
STRATEGY_PATTERN = r"^[0-9a-f]{4,64}$"


def _utc(stamp: datetime | None) -> datetime | None:
    return stamp if stamp is None or stamp.tzinfo else stamp.replace(tzinfo=UTC)


class MarketsRequest(Request):
    pass


class StoredSeries(BaseModel):
    market: str
    unit: str
    first: datetime
    last: datetime
    candles: int


class Markets(RootModel[list[StoredSeries]]):
    """Every stored series (market and unit): its first and last candle, how many."""


class CandlesRequest(Request):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    market: str = Field(description="Upbit market code, e.g. KRW-BTC.")
    unit: str = Field("1", description="Candle unit: 1, 3, 5, 10, 15, 30, 60, 240 or D.")
    start: datetime | None = Field(
        default=None,
        alias="from",
        description="From this time (inclusive, ISO-8601; UTC if no zone).",
    )
    end: datetime | None = Field(
        default=None, alias="to", description="Up to this time (exclusive)."
    )
    last: int = Field(
        1000,
        ge=1,
        le=PAGE_MAX,
        description=f"The newest N candles of the range (at most {PAGE_MAX:,}).",
    )


class Candle(BaseModel):
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    value: float | None


def candle_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The candles of `frame` (store.candles columns) as Candle fields; an unknown `value`
    is None (JSON has no NaN)."""
    from engine.service.events import finite_or_null

    return [
        {
            **{name: row[name] for name in ("ts", "open", "high", "low", "close", "volume")},
            "value": finite_or_null(row["value"]),
        }
        for row in frame.to_dict("records")
    ]


class Candles(Response):
    """A page of one series' stored candles, oldest first: the newest `last` of the range;
    `more` when older ones are left (ask again with `to` = the first one's ts)."""

    market: str
    unit: str
    candles: list[Candle]
    more: bool


class SignalsRequest(Request):
    market: str | None = Field(
        default=None, description="One market's signals (all markets without), e.g. KRW-BTC."
    )
    unit: str | None = Field(
        default=None,
        description="Only signals decided on this candle unit (1, 3, ..., 240 or D).",
    )
    action: Literal["buy", "sell", "hold"] | None = Field(
        default=None, description="Only this action."
    )
    mode: Literal["live", "replay", "demo"] | None = Field(
        default=None, description="Only signals of this kind of session."
    )
    strategy: str | None = Field(
        default=None,
        pattern=STRATEGY_PATTERN,
        description="Only signals decided by this strategy spec: its sha256 hex or a prefix"
        " of it (at least 4 characters).",
    )
    last: int = Field(100, ge=1, le=PAGE_MAX, description=f"The newest N (at most {PAGE_MAX:,}).")

    @field_validator("market")
    @classmethod
    def _market(cls, market: str | None) -> str | None:
        """A malformed code (krw-btc) is refused, where it would match nothing."""
        from engine.upbit.markets import check_market

        return market if market is None else check_market(market)


class StoredSignal(BaseModel):
    ts: datetime
    market: str
    unit: str | None = Field(description="The candle unit decided on (null: not recorded).")
    action: str
    confidence: float | None
    source: str
    reason: str | None
    model_id: int | None
    mode: str = Field(description="live, replay or demo.")
    strategy: str | None = Field(
        default=None,
        description="The sha256 of the strategy spec that decided it (null: older signals).",
    )


class Signals(RootModel[list[StoredSignal]]):
    """Stored signals, newest first."""


class StoredOps(StoreHolder):
    @operation("read")
    def markets(self, request: MarketsRequest) -> Markets:
        """Every stored series: market, unit, first and last candle, how many candles."""
        rows = (
            self.con()
            .execute(
                "SELECT market, unit, min(ts), max(ts), count(*) FROM candles"
                " GROUP BY market, unit ORDER BY market, unit"
            )
            .fetchall()
        )
        return Markets(
            [
                StoredSeries(market=m, unit=u, first=first, last=last, candles=n)
                for m, u, first, last, n in rows
            ]
        )

    @operation("read")
    def candles(self, request: CandlesRequest) -> Candles:
        """A page of one series' stored candles: the newest `last` of [from, to), oldest first."""
        from engine.upbit.markets import check_unit
        from store.candles import load_candles

        unit = check_unit(request.unit)
        frame = load_candles(
            self.con(),
            request.market,
            unit,
            _utc(request.start),
            _utc(request.end),
            last=request.last + 1,
        )
        more = len(frame) > request.last
        frame = frame.tail(request.last)
        candles = [Candle(**record) for record in candle_records(frame)]
        return Candles(market=request.market, unit=unit, candles=candles, more=more)

    @operation("read")
    def signals(self, request: SignalsRequest) -> Signals:
        """Stored signals, newest first: the newest `last` of one market, unit, action, session
        mode or strategy spec (each filter optional)."""
        where, params = [], []
        if request.market:
            where.append("market = ?")
            params.append(request.market)
        if request.unit:
            from engine.upbit.markets import check_unit

            where.append("unit = ?")
            params.append(check_unit(request.unit))
        for name in ("action", "mode"):
            value = getattr(request, name)
            if value:
                where.append(f"{name} = ?")
                params.append(value)
        if request.strategy:  # a prefix, like a short git hash
            where.append("starts_with(strategy, ?)")
            params.append(request.strategy)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cursor = self.con().execute(
            "SELECT ts, market, unit, action, confidence, source, reason, model_id, mode, strategy"
            f" FROM signals {clause} ORDER BY ts DESC, market, unit LIMIT {int(request.last)}",
            params,
        )
        names = [d[0] for d in cursor.description]
        return Signals(
            [StoredSignal(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
        )
