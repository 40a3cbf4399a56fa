"""Replay equals backtest: one strategy spec (and model) over stored candles, run both ways.

The live way replays the candles through the live engine (engine.live.markets: the window,
the newest feature rows, the inference service, `decide` per candle) with the paper broker
filling each signal at the next open; the vectorised way computes the model's answers over
the range in one call (the predictor's `predict_range`), the spec's actions with
`spec_actions`, and backtests them with the broker's sizing (KRW cash, the spec's
`max_position`, Upbit's tick and minimum order, the position left open at the end). The two
must give the same signals, the same fills and the same equity on every candle; the report
gives each side's figures and their largest differences. Nothing is stored: the replay's
signals and book stay in memory.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, ServiceError, operation

if TYPE_CHECKING:
    from engine.live.inference import LoadedModel
    from engine.service.evaluation import EvaluationOps
    from engine.trading.paper import BrokerConfig, Fill
    from engine.trading.spec import StrategySpec

TOLERANCE = 1e-9  # relative: prices, units and equity of the two ways


class ParityRequest(Request):
    market: str = Field(description="Upbit market code, e.g. KRW-BTC.")
    unit: str = Field("1", description="Candle unit.")
    start: datetime | None = Field(
        default=None,
        description="First candle (default: the model's test part when the spec uses one).",
    )
    end: datetime | None = Field(default=None, description="End of the range (exclusive).")
    strategy_spec: dict | None = Field(  # type: ignore[type-arg]
        default=None, description="A strategy spec (default: AI threshold, SMA-cross fallback)."
    )
    model: str | None = Field(
        default=None,
        description="The model deciding (default: the market's champion; none: the rules).",
    )
    fee: float = Field(0.0005, ge=0, lt=1, description="Fee per side, a fraction.")
    slippage: float = Field(0.0, ge=0, lt=10_000, description="Slippage in basis points.")
    initial_cash: float = Field(1_000_000.0, gt=0, description="Paper cash in KRW.")

    @field_validator("market")
    @classmethod
    def _market(cls, value: str) -> str:
        from engine.upbit.markets import check_market

        return check_market(value)

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        from engine.upbit.markets import check_unit

        return check_unit(value)

    @field_validator("strategy_spec")
    @classmethod
    def _spec(cls, value: dict | None) -> dict | None:  # type: ignore[type-arg]
        if value is not None:
            from engine.trading.spec import StrategySpec

            StrategySpec.from_dict(value)
        return value


class ParitySide(Response):
    """One way's result over the range."""

    signals: dict[str, int] = Field(description="Actions by count (buy, sell, hold).")
    fills: int
    final_equity: float = Field(description="KRW, the open position marked to the last close.")
    pnl: float = Field(description="final_equity - initial_cash, KRW.")


class ParityReport(Response):
    """The range run both ways and how far apart they are (0 everywhere: equal)."""

    market: str
    unit: str
    first: datetime
    last: datetime
    candles: int
    strategy: str = Field(description="The spec's name and hash.")
    model: str | None = Field(description="The model deciding (None: the rules).")
    live: ParitySide
    backtest: ParitySide
    action_differences: int = Field(description="Candles whose actions differ.")
    first_difference: str | None = Field(description="The first candle that differs, and how.")
    fill_differences: int = Field(description="Fills (ts, side) on one side only.")
    max_price_difference: float = Field(description="Largest relative fill price difference.")
    max_units_difference: float = Field(description="Largest relative fill units difference.")
    max_equity_difference: float = Field(description="Largest relative equity difference.")
    pnl_difference: float = Field(description="KRW.")
    tolerance: float = TOLERANCE
    equal: bool = Field(description="Same actions and fills, every difference within tolerance.")


class ParityOps(StoreHolder):
    @operation("read")
    def parity(self, request: ParityRequest) -> ParityReport:
        """Run a strategy spec over stored candles through the live engine (replay, paper
        broker) and the vectorised backtest; both results and their largest difference."""
        from engine.trading.paper import BrokerConfig
        from engine.trading.spec import StrategySpec
        from engine.trading.spec_backtest import spec_label, spec_range_actions

        con = self.con()
        spec = StrategySpec.from_dict(request.strategy_spec or {})
        config = BrokerConfig(
            initial_cash=request.initial_cash, fee=request.fee, slippage_bps=request.slippage
        )
        loaded, start, probabilities = self._parity_model(spec, request)
        candles, actions = spec_range_actions(
            con,
            spec,
            market=request.market,
            unit=request.unit,
            start=start,
            end=request.end,
            probabilities=probabilities,
        )
        backtest = _backtest(candles, actions, spec, config, request.unit)
        live = asyncio.run(self._replay(spec, loaded, config, request, candles))
        return _compare(request, spec_label(spec), loaded, candles, actions, backtest, live, config)

    def _parity_model(
        self, spec: StrategySpec, request: ParityRequest
    ) -> tuple[LoadedModel | None, datetime | None, pd.DataFrame | None]:
        """The model deciding (None: the rules), the range's start, its answers over it."""
        con = self.con()
        if not spec.uses_ai:
            return None, request.start, None
        ref = request.model
        if ref is None:
            from store.registry import champion

            record = champion(con, request.market, request.unit)
            if record is None:
                return None, request.start, None  # both ways: the rules, saying "no model"
            ref = record.ref
        answers = cast("EvaluationOps", self).spec_answers(
            con, ref, request.market, request.start, request.end, spec.threshold, []
        )
        loaded, _note, start, probabilities = answers
        if loaded.record.unit != request.unit:
            raise ServiceError(
                f"{loaded.record.ref} decides unit {loaded.record.unit} candles, not"
                f" {request.unit}",
                f"run the parity with --unit {loaded.record.unit}",
            )
        return loaded, start, probabilities

    async def _replay(
        self,
        spec: StrategySpec,
        loaded: LoadedModel | None,
        config: BrokerConfig,
        request: ParityRequest,
        candles: pd.DataFrame,
    ) -> tuple[list[str], list[Fill], np.ndarray]:
        """The range through the live engine: actions, paper fills, equity after each."""
        from engine.live.markets import MarketsEngine
        from engine.trading.paper import PaperBroker
        from store.candles import last_candles

        engine = MarketsEngine(
            self.con(),
            request.unit,
            mode="replay",
            persist_signals=False,
            strategy=spec,
            broker=PaperBroker(config),
            inference=getattr(self, "inference", None),
        )
        lane = engine.add_market(request.market, loaded, no_model_reason="no model")
        engine.fills = []
        first = candles["ts"].iloc[0]
        history = last_candles(
            self.con(), [request.market], request.unit, lane.window, first - pd.Timedelta(1, "us")
        )
        engine.prime(request.market, history)
        equity = np.empty(len(candles))
        assert engine.broker is not None
        for i, row in enumerate(candles.to_dict("records")):
            await engine.on_closed_many([row])
            equity[i] = engine.broker.equity
        return [s.action for s in lane.signals], engine.fills, equity


def _backtest(
    candles: pd.DataFrame,
    actions: np.ndarray,
    spec: StrategySpec,
    config: BrokerConfig,
    unit: str,
) -> tuple[list[tuple[pd.Timestamp, str, float, float]], np.ndarray]:
    """The vectorised way's fills (ts, side, price, units) and equity per candle."""
    from engine.trading.backtest import backtest

    result = backtest(
        candles,
        actions,
        fee=config.fee,
        slippage_bps=config.slippage_bps,
        unit=unit,
        initial=config.initial_cash,
        max_position=spec.max_position,
        tick=config.tick,
        min_order=config.min_order,
        close_at_end=False,
    )
    fills = []
    for trade in result.trades.itertuples(index=False):
        fills.append((trade.entry_ts, "buy", float(trade.entry_price), float(trade.units)))
        if trade.exit_reason == "signal":
            fills.append((trade.exit_ts, "sell", float(trade.exit_price), float(trade.units)))
    return fills, result.equity.to_numpy(dtype=np.float64)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0:
        return 0.0
    scale = np.maximum(np.abs(a), np.abs(b))
    diff = np.abs(a - b) / np.where(scale > 0, scale, 1.0)
    return float(diff.max())


def _compare(
    request: ParityRequest,
    label: str,
    loaded: LoadedModel | None,
    candles: pd.DataFrame,
    actions: np.ndarray,
    backtest: tuple[list[tuple[pd.Timestamp, str, float, float]], np.ndarray],
    live: tuple[list[str], list[Fill], np.ndarray],
    config: BrokerConfig,
) -> ParityReport:
    names = np.array(["sell", "hold", "buy"])[actions.astype(np.int64) + 1]
    live_actions, live_fills, live_equity = live
    vector_fills, vector_equity = backtest
    if len(live_actions) != len(names):
        raise ServiceError(
            f"the replay decided {len(live_actions)} of {len(names)} candles",
            "a candle the engine refused (out of order?): see the server log",
        )
    differ = np.flatnonzero(np.asarray(live_actions) != names)
    first_difference = None
    if len(differ):
        at = int(differ[0])
        first_difference = (
            f"{candles['ts'].iloc[at]:%Y-%m-%d %H:%M} UTC: live {live_actions[at]},"
            f" backtest {names[at]}"
        )
    ours = {(f.ts, f.side): (f.price, f.units) for f in live_fills}
    theirs = {(ts, side): (price, units) for ts, side, price, units in vector_fills}
    both = sorted(set(ours) & set(theirs))
    prices = [(ours[k][0], theirs[k][0]) for k in both]
    units = [(ours[k][1], theirs[k][1]) for k in both]
    price_diff = _relative(*map(np.array, zip(*prices, strict=True))) if prices else 0.0
    units_diff = _relative(*map(np.array, zip(*units, strict=True))) if units else 0.0
    equity_diff = _relative(live_equity, vector_equity)
    fill_differences = len(set(ours) ^ set(theirs))
    initial = config.initial_cash

    def side(acts: list[str], fills: int, equity: np.ndarray) -> ParitySide:
        counts = Counter(acts)
        return ParitySide(
            signals={a: counts.get(a, 0) for a in ("buy", "sell", "hold")},
            fills=fills,
            final_equity=float(equity[-1]),
            pnl=float(equity[-1] - initial),
        )

    equal = (
        not len(differ)
        and fill_differences == 0
        and max(price_diff, units_diff, equity_diff) <= TOLERANCE
    )
    return ParityReport(
        market=request.market,
        unit=request.unit,
        first=candles["ts"].iloc[0],
        last=candles["ts"].iloc[-1],
        candles=len(candles),
        strategy=label,
        model=None if loaded is None else loaded.record.ref,
        live=side(live_actions, len(live_fills), live_equity),
        backtest=side(list(names), len(vector_fills), vector_equity),
        action_differences=len(differ),
        first_difference=first_difference,
        fill_differences=fill_differences,
        max_price_difference=price_diff,
        max_units_difference=units_diff,
        max_equity_difference=equity_diff,
        pnl_difference=float(live_equity[-1] - vector_equity[-1]),
        equal=equal,
    )
