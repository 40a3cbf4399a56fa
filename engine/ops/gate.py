"""The promotion gate's decision: does a challenger's shadow record justify making it champion?

Pure: the caller gathers, over the same resolved candles, both models' per-candle losses and
each model's acted trades' returns, and says how many candidates were tried; the gate answers
promote, keep or insufficient (not enough evidence yet) with every number it used and one
reason a trader can read. Evidence first (minimum resolved candles and trades), then three
tests that must all pass: a one-sided Diebold–Mariano test on the loss, a deflated Sharpe
ratio of the challenger's trades, and a drawdown not worse than the champion's beyond a margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from engine.ops.stats import (
    DMResult,
    DSRResult,
    deflated_sharpe_ratio,
    diebold_mariano,
    max_drawdown,
)

type Verdict = Literal["promote", "keep", "insufficient"]


@dataclass(frozen=True)
class GateConfig:
    """The gate's thresholds, one set per market/unit."""

    min_resolved: int = 500  # resolved candles both models predicted
    min_trades: int = 30  # the challenger's acted trades
    dm_level: float = 0.05  # promote only when the one-sided DM p-value is at most this
    dsr_level: float = 0.95  # ... and the challenger's deflated Sharpe is at least this
    drawdown_margin: float = 0.02  # ... and its max drawdown exceeds the champion's by <= this

    def __post_init__(self) -> None:
        if self.min_resolved < 3 or self.min_trades < 3:
            raise ValueError("min_resolved and min_trades must be at least 3")
        if not (0.0 < self.dm_level < 1.0 and 0.0 < self.dsr_level < 1.0):
            raise ValueError("dm_level and dsr_level must lie strictly between 0 and 1")
        if self.drawdown_margin < 0.0:
            raise ValueError("drawdown_margin must not be negative")


@dataclass(frozen=True)
class Check:
    """One condition of the gate: its measured value against its threshold."""

    name: str  # resolved, trades, loss (DM), deflated_sharpe, drawdown
    passed: bool
    value: float
    threshold: float
    text: str


@dataclass(frozen=True)
class GateDecision:
    verdict: Verdict
    reason: str  # one sentence: the first failed check, or why it promotes
    checks: tuple[Check, ...]
    dm: DMResult
    dsr: DSRResult
    champion_loss: float  # mean per-candle loss
    challenger_loss: float
    champion_trades: int
    challenger_trades: int
    champion_drawdown: float
    challenger_drawdown: float
    n_candidates: int
    config: GateConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (infinite statistics stay floats: the caller maps them)."""
        return asdict(self)


def decide(
    champion_loss: np.ndarray,
    challenger_loss: np.ndarray,
    champion_trades: np.ndarray,
    challenger_trades: np.ndarray,
    *,
    n_candidates: int,
    config: GateConfig | None = None,
    horizon: int = 1,
    trial_variance: float | None = None,
) -> GateDecision:
    """Decide on a challenger from paired per-candle losses and each model's trade returns.

    `n_candidates`: how many challengers were tried for this market/unit (the DSR's trials);
    `horizon`: the label horizon in candles (the DM test's autocorrelation lags);
    `trial_variance`: the variance of the candidates' Sharpes when known (see
    stats.deflated_sharpe_ratio for the default)."""
    config = config or GateConfig()
    champion = np.asarray(champion_loss, dtype=np.float64)
    challenger = np.asarray(challenger_loss, dtype=np.float64)
    champion_returns = np.asarray(champion_trades, dtype=np.float64)
    challenger_returns = np.asarray(challenger_trades, dtype=np.float64)
    dm = diebold_mariano(champion, challenger, horizon=horizon, one_sided=True)
    dsr = deflated_sharpe_ratio(challenger_returns, n_candidates, trial_variance)
    champion_dd = max_drawdown(champion_returns)
    challenger_dd = max_drawdown(challenger_returns)
    n_trades = len(challenger_returns)

    evidence = (
        Check(
            "resolved",
            dm.n >= config.min_resolved,
            dm.n,
            config.min_resolved,
            f"{dm.n} resolved candles (minimum {config.min_resolved})",
        ),
        Check(
            "trades",
            n_trades >= config.min_trades,
            n_trades,
            config.min_trades,
            f"{n_trades} challenger trades (minimum {config.min_trades})",
        ),
    )
    dm_text = f"DM p={dm.p_value:.4g} (level {config.dm_level:g}), " + (
        f"mean loss {challenger.mean():.4f} vs {champion.mean():.4f}" if dm.n else "no candles"
    )
    tests = (
        Check("loss", dm.p_value <= config.dm_level, dm.p_value, config.dm_level, dm_text),
        Check(
            "deflated_sharpe",
            dsr.dsr >= config.dsr_level,
            dsr.dsr,
            config.dsr_level,
            f"deflated Sharpe {dsr.dsr:.3f} (level {config.dsr_level:g}; Sharpe "
            f"{dsr.sharpe:.3f} per trade vs {dsr.benchmark:.3f} expected best of "
            f"{n_candidates})" + (f"; {dsr.note}" if dsr.note else ""),
        ),
        Check(
            "drawdown",
            challenger_dd <= champion_dd + config.drawdown_margin,
            challenger_dd,
            champion_dd + config.drawdown_margin,
            f"max drawdown {challenger_dd:.2%} vs champion {champion_dd:.2%} "
            f"(margin {config.drawdown_margin:.2%})",
        ),
    )
    missing = [c for c in evidence if not c.passed]
    failed = [c for c in tests if not c.passed]
    verdict: Verdict
    if missing:
        verdict = "insufficient"
        reason = "not enough evidence: " + "; ".join(c.text for c in missing)
    elif failed:
        verdict = "keep"
        reason = "champion kept: " + "; ".join(c.text for c in failed)
    else:
        verdict = "promote"
        reason = "challenger promoted: " + "; ".join(c.text for c in tests)
    return GateDecision(
        verdict=verdict,
        reason=reason,
        checks=evidence + tests,
        dm=dm,
        dsr=dsr,
        champion_loss=float(champion.mean()) if dm.n else 0.0,
        challenger_loss=float(challenger.mean()) if dm.n else 0.0,
        champion_trades=len(champion_returns),
        challenger_trades=n_trades,
        champion_drawdown=champion_dd,
        challenger_drawdown=challenger_dd,
        n_candidates=n_candidates,
        config=config,
    )
