"""The statistics of the promotion gate against hand computations, independent formulas,
the deflated Sharpe paper's worked example, and their size under the null by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, t, ttest_1samp
from sklearn.metrics import log_loss

from engine.ops.stats import (
    deflated_sharpe_ratio,
    diebold_mariano,
    expected_max_sharpe,
    log_loss_rows,
    max_drawdown,
    probabilistic_sharpe_ratio,
    zero_one_loss,
)

# champion and challenger losses whose difference (challenger - champion) is
# d = [-0.5, 0.2, -0.3, -0.1, 0.0, -0.4, 0.1, -0.2]: mean -0.15, deviations
# [-0.35, 0.35, -0.15, 0.05, 0.15, -0.25, 0.25, -0.05], gamma0 = 0.42 / 8 = 0.0525,
# gamma1 = -0.2875 / 8 = -0.0359375.
CHAMPION = np.array([1.0, 0.8, 1.1, 0.9, 0.7, 1.2, 0.6, 1.0])
DIFFERENCE = np.array([-0.5, 0.2, -0.3, -0.1, 0.0, -0.4, 0.1, -0.2])


def test_log_loss_rows_mean_is_sklearns_log_loss_and_zero_one_counts_misses() -> None:
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1.0, 1.0, 1.0], 50)
    labels = rng.integers(0, 3, 50)
    rows = log_loss_rows(proba, labels)
    assert rows[0] == pytest.approx(-math.log(proba[0, labels[0]]))
    assert rows.mean() == pytest.approx(log_loss(labels, proba, labels=[0, 1, 2]))
    # a zero probability is clipped, never an infinite loss
    assert log_loss_rows(np.array([[1.0, 0.0, 0.0]]), np.array([2]))[0] == pytest.approx(
        -math.log(1e-12)
    )
    misses = zero_one_loss(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    assert misses.tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="0..2"):
        log_loss_rows(proba[:2], np.array([0, 3]))


def test_dm_by_hand_one_step() -> None:
    # DM = -0.15 / sqrt(0.0525 / 8), squared 24/7; the HLN factor for h=1 is sqrt(7/8), so
    # the corrected statistic is -sqrt(3), referred to t with 7 degrees of freedom.
    result = diebold_mariano(CHAMPION, CHAMPION + DIFFERENCE)
    assert result.statistic == pytest.approx(-math.sqrt(3.0))
    assert result.p_value == pytest.approx(2 * t.sf(math.sqrt(3.0), 7))
    assert result.n == 8 and result.mean_difference == pytest.approx(-0.15)
    one_sided = diebold_mariano(CHAMPION, CHAMPION + DIFFERENCE, one_sided=True)
    assert one_sided.p_value == pytest.approx(t.cdf(-math.sqrt(3.0), 7))
    # for h=1 the corrected DM is the one-sample t statistic of the differences
    reference = ttest_1samp(DIFFERENCE, 0.0, alternative="less")
    assert one_sided.statistic == pytest.approx(reference.statistic)
    assert one_sided.p_value == pytest.approx(reference.pvalue)
    # the champion better: one-sided evidence for the challenger vanishes
    reverse = diebold_mariano(CHAMPION + DIFFERENCE, CHAMPION, one_sided=True)
    assert reverse.p_value == pytest.approx(1 - one_sided.p_value)


def test_dm_by_hand_two_steps_falls_back_to_bartlett_when_rectangular_is_negative() -> None:
    # rectangular: 0.0525 + 2 * (-0.0359375) < 0; Bartlett: 0.0525 - 0.0359375 = 0.0165625.
    # HLN factor for n=8, h=2: sqrt((8 + 1 - 4 + 2/8) / 8) = sqrt(0.65625).
    result = diebold_mariano(CHAMPION, CHAMPION + DIFFERENCE, horizon=2)
    expected = -0.15 / math.sqrt(0.0165625 / 8) * math.sqrt(0.65625)
    assert result.statistic == pytest.approx(expected)
    assert result.p_value == pytest.approx(2 * t.sf(abs(expected), 7))


def _dm_reference(d: np.ndarray, h: int) -> float:
    """The statistic written out with loops: rectangular autocovariances up to h-1."""
    n = len(d)
    mean = sum(d) / n
    gammas = [sum((d[i] - mean) * (d[i - k] - mean) for i in range(k, n)) / n for k in range(h)]
    variance = gammas[0] + 2 * sum(gammas[1:])
    return mean / math.sqrt(variance / n) * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)


def test_dm_with_overlapping_horizon_matches_a_written_out_computation() -> None:
    rng = np.random.default_rng(7)
    d = np.convolve(rng.normal(-0.2, 1.0, 42), np.ones(3), "valid")  # MA(2): horizon 3
    result = diebold_mariano(np.zeros(40), d, horizon=3)
    assert result.statistic == pytest.approx(_dm_reference(d, 3))
    assert result.p_value == pytest.approx(2 * t.sf(abs(_dm_reference(d, 3)), 39))


@pytest.mark.parametrize(("n", "horizon", "upper"), [(10, 1, 0.065), (100, 3, 0.075)])
def test_dm_size_under_the_null_is_near_the_level(n: int, horizon: int, upper: float) -> None:
    """Equal expected loss (skewed losses, MA(h-1) differentials): over 2000 seeds the test
    rejects at 5% about 5% of the time (binomial sd 0.5 points; h > 1 runs a little over, as
    the HLN paper reports). Without the small-sample correction n=10 rejects 8-9%."""
    rejected = {False: 0, True: 0}
    for seed in range(2000):
        rng = np.random.default_rng(seed)
        d = np.convolve(rng.standard_normal(n + horizon - 1), np.ones(horizon), "valid")
        champion = rng.exponential(1.0, n)
        for one_sided in (False, True):
            p = diebold_mariano(champion, champion + d, horizon=horizon, one_sided=one_sided)
            rejected[one_sided] += p.p_value <= 0.05
    for count in rejected.values():
        assert 0.035 <= count / 2000 <= upper


def test_dm_degenerate_inputs_give_stated_results() -> None:
    same = diebold_mariano(CHAMPION, CHAMPION.copy())
    assert (same.statistic, same.p_value) == (0.0, 1.0) and "identical" in same.note
    better = diebold_mariano(CHAMPION, CHAMPION - 0.1, one_sided=True)
    assert better.statistic == -math.inf and better.p_value == 0.0 and "constant" in better.note
    worse = diebold_mariano(CHAMPION, CHAMPION + 0.1, one_sided=True)
    assert worse.statistic == math.inf and worse.p_value == 1.0
    few = diebold_mariano(CHAMPION[:4], CHAMPION[:4] - DIFFERENCE[:4], horizon=2)
    assert (few.statistic, few.p_value, few.n) == (0.0, 1.0, 4) and "too few" in few.note
    empty = diebold_mariano(np.empty(0), np.empty(0))
    assert (empty.p_value, empty.mean_difference) == (1.0, 0.0)
    for result in (same, better, worse, few, empty):
        assert not math.isnan(result.statistic) and not math.isnan(result.p_value)
    with pytest.raises(ValueError, match="same candles"):
        diebold_mariano(CHAMPION, CHAMPION[:-1])
    with pytest.raises(ValueError, match="finite"):
        diebold_mariano(CHAMPION, np.where(CHAMPION > 1, np.nan, CHAMPION))


def test_deflated_sharpe_reproduces_the_papers_example() -> None:
    """Bailey and López de Prado (2014), "The Deflated Sharpe Ratio", numerical example:
    N = 100 trials, V[SR_n] = 1/2 (annualized), T = 1250 daily returns, skewness -3,
    kurtosis 10, best annualized SR 2.5. The paper states SR0 ~ 0.1132, SR ~ 0.1581 and
    DSR ~ 0.9004 (not significant at 95%)."""
    sharpe = 2.5 / math.sqrt(250)
    benchmark = expected_max_sharpe(100, 0.5 / 250)
    assert benchmark == pytest.approx(0.1132, abs=5e-5)
    assert sharpe == pytest.approx(0.1581, abs=5e-5)
    dsr = probabilistic_sharpe_ratio(sharpe, benchmark, 1250, skew=-3.0, kurtosis=10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)
    # computed independently from the paper's equations
    gamma = 0.5772156649015329
    sr0 = math.sqrt(0.5 / 250) * (
        (1 - gamma) * norm.ppf(1 - 1 / 100) + gamma * norm.ppf(1 - 1 / (100 * math.e))
    )
    z = (sharpe - sr0) * math.sqrt(1249) / math.sqrt(1 + 3 * sharpe + 9 / 4 * sharpe**2)
    assert dsr == pytest.approx(norm.cdf(z), rel=1e-12)


def test_deflated_sharpe_of_returns_uses_their_moments_and_guards_degenerate_ones() -> None:
    rng = np.random.default_rng(3)
    returns = rng.standard_t(5, 400) * 0.01 + 0.002
    result = deflated_sharpe_ratio(returns, n_trials=10)
    centered = returns - returns.mean()
    skew = np.mean(centered**3) / np.mean(centered**2) ** 1.5
    kurtosis = np.mean(centered**4) / np.mean(centered**2) ** 2
    sharpe = returns.mean() / returns.std(ddof=1)
    benchmark = expected_max_sharpe(10, 1 / 399)  # zero-skill sampling variance by default
    assert (result.sharpe, result.skew, result.kurtosis) == pytest.approx((sharpe, skew, kurtosis))
    assert result.benchmark == pytest.approx(benchmark)
    assert result.dsr == pytest.approx(
        probabilistic_sharpe_ratio(sharpe, benchmark, 400, skew, kurtosis)
    )
    # more trials, higher bar: the DSR falls
    assert deflated_sharpe_ratio(returns, n_trials=1000).dsr < result.dsr
    assert expected_max_sharpe(1, 0.3) == 0.0
    constant = deflated_sharpe_ratio(np.full(50, 0.01), n_trials=5)
    assert constant.dsr == 0.0 and "constant" in constant.note
    few = deflated_sharpe_ratio(np.array([0.01, 0.02]), n_trials=5)
    assert few.dsr == 0.0 and "too few" in few.note


def test_max_drawdown_compounds_from_the_running_peak() -> None:
    # equity 1 -> 1.1 -> 0.88 -> 0.968 -> 1.0648: the fall from 1.1 to 0.88 is 20%
    assert max_drawdown(np.array([0.1, -0.2, 0.1, 0.1])) == pytest.approx(0.2)
    assert max_drawdown(np.array([-0.5])) == pytest.approx(0.5)
    assert max_drawdown(np.array([0.1, 0.2])) == 0.0
    assert max_drawdown(np.empty(0)) == 0.0
