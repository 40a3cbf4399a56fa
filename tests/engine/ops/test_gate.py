"""The promotion gate on synthetic shadow records (tests/engine/ops/simulate.py): a
challenger truly no better is promoted at most at the configured rate over many seeds, a
clearly better one is promoted, and no promotion happens without the minimum evidence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from engine.ops.gate import GateConfig, GateDecision, decide
from tests.engine.ops.simulate import ShadowRecord, shadow_record

SEEDS = range(200)


def _decide(record: ShadowRecord, config: GateConfig | None = None, **kw: int) -> GateDecision:
    return decide(
        record.champion_loss,
        record.challenger_loss,
        record.champion_trades,
        record.challenger_trades,
        n_candidates=kw.get("n_candidates", 5),
        config=config,
    )


@pytest.mark.parametrize("signal", [1.0, 0.5], ids=["both-profitable", "neither-profitable"])
def test_an_equal_skill_challenger_is_promoted_at_most_at_the_configured_rate(
    signal: float,
) -> None:
    """Equal noise on the same market: 200 seeds. The one-sided DM test alone rejects at its
    level under the null; the count must not be significantly above it (binomial, 1%)."""
    config = GateConfig()
    promoted = sum(
        _decide(shadow_record(seed, signal=signal), config).verdict == "promote" for seed in SEEDS
    )
    assert binom.sf(promoted - 1, len(SEEDS), config.dm_level) > 0.01, promoted
    if signal == 0.5:  # losing trades after fees: the deflated Sharpe refuses every one
        assert promoted == 0


def test_a_clearly_better_challenger_is_promoted_with_every_number() -> None:
    for seed in range(50):
        decision = _decide(shadow_record(seed, challenger_noise=0.5))
        assert decision.verdict == "promote", decision.reason
        assert all(check.passed for check in decision.checks)
    assert decision.reason.startswith("challenger promoted: DM p=")
    assert decision.dm.one_sided and decision.dm.mean_difference < 0
    assert decision.challenger_loss < decision.champion_loss
    assert decision.dsr.n == decision.challenger_trades and decision.dsr.n_trials == 5
    assert [check.name for check in decision.checks] == [
        "resolved",
        "trades",
        "loss",
        "deflated_sharpe",
        "drawdown",
    ]
    assert decision.to_dict()["config"]["dm_level"] == 0.05


def test_no_promotion_without_the_minimum_evidence() -> None:
    config = GateConfig(min_resolved=500, min_trades=30)
    short = _decide(shadow_record(1, n_candles=300, challenger_noise=0.5), config)
    assert short.verdict == "insufficient"
    assert short.reason == "not enough evidence: 300 resolved candles (minimum 500)"
    assert short.dm.p_value < 0.05 and short.dsr.dsr > 0.95  # the tests alone would pass
    record = shadow_record(1, challenger_noise=0.5)
    few = decide(
        record.champion_loss,
        record.challenger_loss,
        record.champion_trades,
        record.challenger_trades[:29],
        n_candidates=5,
        config=config,
    )
    assert few.verdict == "insufficient" and "29 challenger trades (minimum 30)" in few.reason
    # whatever the size of the record, a promotion carries the minimum evidence
    for seed, n_candles in zip(range(40), np.linspace(20, 1200, 40).astype(int), strict=True):
        decision = _decide(shadow_record(seed, n_candles=n_candles, challenger_noise=0.5), config)
        if decision.verdict == "promote":
            assert decision.dm.n >= 500 and decision.challenger_trades >= 30
        else:
            assert n_candles < 500 or decision.challenger_trades < 30, decision.reason


def test_lower_loss_without_edge_or_with_a_deeper_drawdown_keeps_the_champion() -> None:
    rng = np.random.default_rng(5)
    champion_loss = rng.exponential(1.0, 1000)
    challenger_loss = champion_loss - 0.2  # certainly lower
    champion_trades = rng.normal(0.002, 0.01, 200)
    flat = np.tile([0.001, -0.001], 100)  # no edge, no drawdown to speak of
    kept = decide(champion_loss, challenger_loss, champion_trades, flat, n_candidates=20)
    assert kept.verdict == "keep" and kept.dm.p_value == 0.0
    assert [c.name for c in kept.checks if not c.passed] == ["deflated_sharpe"]
    assert kept.reason.startswith("champion kept: deflated Sharpe")
    # the same edge, but one run of losses deepens the drawdown by 30 points
    deep = np.concatenate((np.full(30, -0.012), rng.normal(0.01, 0.01, 170)))
    kept = decide(champion_loss, challenger_loss, champion_trades, deep, n_candidates=20)
    assert kept.verdict == "keep", kept.reason
    assert [c.name for c in kept.checks if not c.passed] == ["drawdown"]
    assert kept.challenger_drawdown > kept.champion_drawdown + 0.02


def test_config_refuses_meaningless_levels() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        GateConfig(dm_level=0.0)
    with pytest.raises(ValueError, match="at least 3"):
        GateConfig(min_trades=0)
