"""Workstation operations for the TUI's Markets screen (issue 13): `market_board`.

One row per market: the session's watchlist when the Workstation runs one (its last price,
decision and paper position as the engine holds them; a replay that ended keeps its last),
else every market with stored candles of the unit (the newest stored signal as the decision,
the stored live paper account's position). Beside those, from the stored candles of the unit
in one query for all markets: the rolling 24 h window ending at each market's newest candle
(change from the first candle's open to the last price, base volume, KRW value) and the
newest closes for a sparkline; from `drift_events`, each market's newest performance drift.

KRW value: Upbit's candles carry it (`value`), the shared CSV history does not; a candle
without it counts as close * volume and the row says the value is estimated.

Cost: the candle query reads only the newest day (or the sparkline's span, if longer) of each
series, and is kept until a series of the unit is written again (`candle_series` stamps every
write), so a poll every second costs a primary-key read plus the small tables' aggregates.
Measured on the 2-core dev machine, 200 markets of 1-minute candles: 3,000 each (load ~2):
~30 ms computed, ~8 ms kept; 10,000 each, 2 M rows (load ~6): ~160-240 ms computed, ~32 ms
kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, operation

if TYPE_CHECKING:
    import duckdb

DAY_MINUTES = 24 * 60
MINUTE_US = 60_000_000
CACHED = 8  # candle aggregates kept (one per unit and markets asked)


class BoardRequest(Request):
    unit: str | None = Field(
        default=None,
        description="Candle unit (the running session's, else 1).",
    )
    spark: int = Field(
        default=30, ge=1, le=500, description="How many of the newest closes each row carries."
    )
    markets: list[str] = Field(
        default_factory=list,
        max_length=500,
        description="Only these markets (none: the watchlist, or every stored market).",
    )

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str | None) -> str | None:
        from engine.upbit.markets import check_unit

        return None if value is None else check_unit(value)


class BoardRow(BaseModel):
    market: str
    unit: str = Field(description="The unit its candles and decision are at.")
    watched: bool = Field(description="The running session decides it.")
    last_ts: datetime | None = Field(description="The newest candle (the engine's while live).")
    last_price: float | None
    change_24h: float | None = Field(
        description="last price / the open of the day's first candle - 1 (a fraction)."
    )
    volume_24h: float | None = Field(description="Base-currency volume of the day's candles.")
    value_24h: float | None = Field(description="KRW traded over the day's candles.")
    value_estimated: bool = Field(
        description="Some candle had no KRW value: it counted as close * volume."
    )
    day_candles: int = Field(description="Candles in the 24 h window (fewer: a gap or new).")
    spark: list[float] = Field(description="The newest closes, oldest first.")
    action: str | None = None
    confidence: float | None = None
    source: str | None = Field(default=None, description="The model's ref or the rule's name.")
    source_kind: str | None = Field(default=None, description="model or rule.")
    reason: str | None = None
    decided_at: datetime | None = Field(default=None, description="The candle decided on.")
    position: float | None = Field(default=None, description="Units held on paper.")
    position_value: float | None = Field(default=None, description="KRW at the last price.")
    unrealised_pnl: float | None = None
    drift_at: datetime | None = Field(
        default=None,
        description="The candle whose resolved outcome raised the newest performance drift event.",
    )
    drift: str | None = Field(default=None, description="Its stream and detector.")


class MarketBoard(Response):
    """The market board (see engine/service/board.py)."""

    unit: str
    live: bool = Field(description="The rows are the session's watchlist.")
    mode: str | None = Field(description="The session's mode (live, replay, demo), if any.")
    account: str | None = Field(
        description="The paper account the positions are of (the session's, else the one"
        " saved last)."
    )
    rows: list[BoardRow]


_CANDLES_SQL = """
WITH last AS (
    SELECT market, epoch_us(max(ts)) AS last_us FROM candles
    WHERE unit = $unit AND ($all OR market IN (SELECT unnest($markets)))
    GROUP BY market
), recent AS (
    SELECT c.market, c.ts, c.open, c.close, c.volume, c.value,
        epoch_us(c.ts) > l.last_us - $day_us AS day
    FROM candles c JOIN last l ON c.market = l.market
    WHERE c.unit = $unit AND epoch_us(c.ts) > l.last_us - $span_us
)
SELECT market,
    max(ts) AS last_ts,
    arg_max(close, ts) AS last_close,
    arg_min(open, ts) FILTER (WHERE day) AS day_open,
    sum(volume) FILTER (WHERE day) AS volume,
    sum(coalesce(value, close * volume)) FILTER (WHERE day) AS value,
    coalesce(bool_or(value IS NULL) FILTER (WHERE day), false) AS estimated,
    count(*) FILTER (WHERE day) AS day_candles,
    max_by(close, ts, $spark) AS spark
FROM recent GROUP BY market
"""

_SIGNALS_SQL = """
SELECT market, max(ts), arg_max(action, ts), arg_max(confidence, ts), arg_max(source, ts),
    arg_max(model_id, ts), arg_max(reason, ts)
FROM signals WHERE (unit = $unit OR unit IS NULL) AND market IN (SELECT unnest($markets))
GROUP BY market
"""

# the positions of the paper account saved last (the live one, or a replay's)
_POSITIONS_SQL = """
SELECT market, account, units, units * last_price, units * last_price - cost
FROM paper_positions
WHERE account = (SELECT account FROM paper_accounts ORDER BY updated_at DESC, account LIMIT 1)
    AND market IN (SELECT unnest($markets))
"""

_DRIFT_SQL = """
SELECT market, unit, max(ts), arg_max(stream || ' ' || detector, ts)
FROM drift_events WHERE market IN (SELECT unnest($markets))
GROUP BY market, unit
"""


class BoardOps(StoreHolder):
    """The market board (see the module docstring)."""

    # the newest candle aggregates: (unit, markets, spark) -> (the series' versions, rows)
    _board_cache: dict[tuple[Any, ...], tuple[list[Any], dict[str, tuple[Any, ...]]]] | None = None

    @operation("read")
    def market_board(self, request: BoardRequest) -> MarketBoard:
        """Every watched (or stored) market: price, 24 h change and volume, sparkline closes,
        decision, paper position, newest drift event."""
        status = self._live_status()
        unit = request.unit or status.unit or "1"
        # the session's watchlist, each market at its unit (a session that ended, a replay
        # played out, keeps its last states); none when another unit is asked for
        watched = {m.market: m for m in status.markets} if unit == status.unit else {}
        names = list(request.markets) or list(watched)
        units = {name: watched[name].unit if name in watched else unit for name in names}
        con = self.con()
        candles: dict[tuple[str, str], tuple[Any, ...]] = {}
        for each in sorted(set(units.values())) or [unit]:
            asked = [name for name in names if units[name] == each]
            for market, row in self._candle_rows(con, each, asked, request.spark).items():
                candles[market, each] = row
        if not names:  # every stored market of the unit
            names = [market for market, _ in candles]
            units = dict.fromkeys(names, unit)
        drift = {
            (r[0], r[1]): r[1:] for r in con.execute(_DRIFT_SQL, {"markets": names}).fetchall()
        }
        signals: dict[str, Any] = {}
        positions: dict[str, Any] = {}
        account = status.paper.account if watched and status.paper is not None else None
        if not watched:
            params = {"unit": unit, "markets": names}
            signals = {r[0]: r for r in con.execute(_SIGNALS_SQL, params).fetchall()}
            found = con.execute(_POSITIONS_SQL, {"markets": names}).fetchall()
            positions = {r[0]: r[1:] for r in found}
            account = found[0][1] if found else None
        rows = [
            _row(
                name,
                units[name],
                candles.get((name, units[name])),
                watched.get(name),
                signals.get(name),
                positions.get(name),
                drift.get((name, units[name])),
            )
            for name in names
        ]
        return MarketBoard(
            unit=unit,
            live=bool(watched),
            mode=status.mode if watched else None,
            account=account,
            rows=rows,
        )

    def _candle_rows(
        self, con: duckdb.DuckDBPyConnection, unit: str, names: list[str], spark: int
    ) -> dict[str, tuple[Any, ...]]:
        """The candle aggregate of each market (all of the unit's when `names` is empty),
        computed again only when a series was written since the last call that asked the same
        (`candle_series` stamps every write: one primary-key read tells)."""
        from store.candles import unit_minutes

        versions = con.execute(
            "SELECT market, updated_at FROM candle_series WHERE unit = $unit"
            " AND ($all OR market IN (SELECT unnest($markets))) ORDER BY market",
            {"unit": unit, "all": not names, "markets": names},
        ).fetchall()
        key = (unit, tuple(names), spark)
        cache = self._board_cache if self._board_cache is not None else {}
        cached = cache.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1]
        span = max(DAY_MINUTES, spark * unit_minutes(unit))
        found = con.execute(
            _CANDLES_SQL,
            {
                "unit": unit,
                "all": not names,
                "markets": names,
                "day_us": DAY_MINUTES * MINUTE_US,
                "span_us": span * MINUTE_US,
                "spark": spark,
            },
        ).fetchall()
        rows = {row[0]: row for row in sorted(found)}
        if len(cache) >= CACHED:
            cache = {}  # a few boards are asked for at once (units, screens): start afresh
        cache[key] = (versions, rows)
        self._board_cache = cache
        return rows

    def _live_status(self) -> Any:
        """The running session's status (a Workstation's LiveOps; none on a bare holder)."""
        from engine.service.live import LiveStatus

        status = getattr(self, "_status", None)
        return status() if status is not None else LiveStatus(running=False)


def _row(
    market: str,
    unit: str,
    candles: tuple[Any, ...] | None,
    live: Any,
    signal: tuple[Any, ...] | None,
    position: tuple[Any, ...] | None,
    drift: tuple[Any, ...] | None,
) -> BoardRow:
    """One board row from the candle aggregate, the live state (a WatchedMarket) or else the
    stored signal and position, and the newest drift event (each may be None)."""
    row = BoardRow(
        market=market,
        unit=unit,
        watched=live is not None,
        last_ts=None,
        last_price=None,
        change_24h=None,
        volume_24h=None,
        value_24h=None,
        value_estimated=False,
        day_candles=0,
        spark=[],
    )
    day_open = None
    if candles is not None:
        _, row.last_ts, row.last_price, day_open, row.volume_24h, row.value_24h = candles[:6]
        row.value_estimated, row.day_candles = bool(candles[6]), int(candles[7])
        row.spark = list(candles[8])[::-1]  # max_by lists the newest first
    if live is not None:
        newer = row.last_ts is None or (live.last_ts is not None and live.last_ts >= row.last_ts)
        if live.last_price is not None and newer:
            row.last_ts, row.last_price = live.last_ts, live.last_price
        row.action, row.confidence, row.reason = live.action, live.confidence, live.reason
        row.source, row.decided_at = live.source, live.last_ts
        if live.action is not None:
            seated = live.model is not None and live.source == live.model
            row.source_kind = "model" if seated else "rule"
        row.position, row.position_value = live.position, live.position_value
        row.unrealised_pnl = live.unrealised_pnl
    else:
        if signal is not None:
            _, row.decided_at, row.action, row.confidence, row.source, model_id, row.reason = signal
            row.source_kind = "rule" if model_id is None else "model"
        if position is not None:
            _, row.position, row.position_value, row.unrealised_pnl = position
    if day_open and row.last_price is not None:
        row.change_24h = row.last_price / day_open - 1.0
    if drift is not None:
        _, row.drift_at, row.drift = drift
    return row
