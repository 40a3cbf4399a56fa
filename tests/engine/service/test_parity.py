"""Replay equals backtest on real candles: the live engine with the paper broker and the
vectorised backtest of the same strategy spec and model give the same signals, fills and PnL
(to 1e-9), for the rule, the AI threshold and each hybrid form."""

from __future__ import annotations

import numpy as np
import pytest

from engine.research.labels import LabelSpec
from engine.service import Workstation
from engine.service.parity import ParityRequest, _compare
from engine.training.train import train_model
from store.candles import upsert_candles
from tests.conftest import shared_candles

RULES = [{"rule": "sma-cross", "fast": 5, "slow": 20}, {"rule": "rsi", "period": 14}]
SPECS = {
    "rule": {"name": "rule", "form": "rule", "rules": RULES[:1]},
    "ai": {"name": "ai", "form": "ai", "threshold": 0.36},
    "voting": {"name": "vote", "form": "voting", "threshold": 0.34, "rules": RULES,
               "cooldown": 3},
    "regime": {"name": "regime", "form": "regime", "threshold": 0.36, "rules": RULES[:1],
               "regime": {"measure": "volatility", "period": 30, "enter": 0.0006,
                          "exit": 0.0004, "high": "ai"}},
    "filter": {"name": "filter", "form": "filter", "rules": RULES[:1],
               "filter": {"min_confidence": 0.3}, "max_position": 300_000.0},
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A store of 2,400 real KRW-BTC minutes and a small XGBoost champion (its test part,
    ~360 candles, is the range a spec with the AI runs over)."""
    from store.db import connect

    home = tmp_path_factory.mktemp("parity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        patch.delenv("UPQUANT_ARTIFACT_KEY", raising=False)
        patch.delenv("UPQUANT_ARTIFACT_KEY_FILE", raising=False)
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 2400))
        # labels at a low threshold: buys and sells common enough that the AI trades
        train_model(con, "xgboost", "KRW-BTC", "1",
                    params={"n_estimators": 80, "max_depth": 4, "n_jobs": 1},
                    label_spec=LabelSpec(horizon=2, threshold=0.0002))
        with Workstation(con) as workstation:
            yield workstation
        con.close()


@pytest.mark.parametrize("form", list(SPECS))
def test_replay_through_the_live_engine_equals_the_vectorised_backtest(ws, form: str) -> None:
    report = ws.parity(ParityRequest(market="KRW-BTC", strategy_spec=SPECS[form], slippage=5.0))
    assert report.equal, report
    assert report.action_differences == 0 and report.fill_differences == 0
    assert report.max_equity_difference <= 1e-9 and abs(report.pnl_difference) <= 1e-3
    assert report.live == report.backtest
    assert report.live.fills >= 3, report.live  # it traded: the comparison is not of nothing
    assert (report.model is None) == (form == "rule")
    if form == "rule":
        assert report.candles == 2400  # every stored candle (the first ones hold: too few)
    else:
        assert 200 < report.candles < 600  # the model's test part only


def test_a_difference_is_reported_where_it_happens(ws) -> None:
    """The comparison is not blind: one action changed on the vectorised side is found, at
    its candle, with the fills and equity that follow from it."""
    request = ParityRequest(market="KRW-BTC", strategy_spec=SPECS["rule"])
    from engine.service.parity import _backtest
    from engine.trading.paper import BrokerConfig
    from engine.trading.spec import StrategySpec
    from engine.trading.spec_backtest import spec_range_actions

    spec = StrategySpec.from_dict(SPECS["rule"])
    config = BrokerConfig()
    candles, actions = spec_range_actions(ws.con(), spec, market="KRW-BTC", unit="1")
    first_buy = int(np.flatnonzero(actions == 1)[0])
    live_actions = list(np.array(["sell", "hold", "buy"])[actions + 1])
    changed = actions.copy()
    changed[first_buy] = 0  # the backtest skips the first buy
    import asyncio

    live = asyncio.run(ws._replay(spec, None, config, request, candles))
    assert live[0] == live_actions
    report = _compare(request, "rule", None, candles, changed, _backtest(
        candles, changed, spec, config, "1"), live, config)
    assert not report.equal and report.action_differences == 1
    assert report.first_difference.startswith(f"{candles['ts'].iloc[first_buy]:%Y-%m-%d %H:%M}")
    assert report.fill_differences >= 1 and report.max_equity_difference > 1e-6
