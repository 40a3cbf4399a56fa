"""Drift detectors on synthetic streams with fixed seeds: ADWIN and Page–Hinkley detect a fall
of accuracy (0/1 stream) and of trade PnL (float stream) within a bounded number of values
after the change and raise no alarm on stationary streams of the same length; PSI and KS per
feature tell the same distribution from a shifted one, KS as scipy computes it."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from engine.ops.drift import Adwin, PageHinkley, feature_drift, ks_2samp, psi, psi_edges

SEEDS = range(100)
BEFORE, AFTER = 1000, 1000  # values before the change, and after it
SD = 0.01  # per-trade return sd of the PnL stream

type Detector = Adwin | PageHinkley


def _correctness(rng: np.random.Generator, accuracy: float, n: int) -> np.ndarray:
    return (rng.random(n) < accuracy).astype(np.float64)


def _pnl(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.normal(mean, SD, n)


# (stream, level before, level after): accuracy 60% -> 30%; mean PnL +0.2 sd -> -0.4 sd
STREAMS = {"correctness": (_correctness, 0.6, 0.3), "pnl": (_pnl, 0.2 * SD, -0.4 * SD)}
DETECTORS: dict[str, Callable[[], Detector]] = {
    "adwin-correctness": Adwin,
    "adwin-pnl": lambda: Adwin(value_range=6 * SD),
    "page-hinkley-correctness": lambda: PageHinkley(direction="down"),
    "page-hinkley-pnl": lambda: PageHinkley(0.2 * SD, 25 * SD, direction="down"),
}
BOUND = {"adwin": 500, "page-hinkley": 400}  # the largest delay allowed, in values


def _first_alarm(detector: Detector, values: np.ndarray) -> int | None:
    for i, value in enumerate(values.tolist()):
        if detector.update(value):
            return i
    return None


@pytest.mark.parametrize("name", DETECTORS)
def test_detects_a_fall_within_a_bound_and_never_on_a_stationary_stream(name: str) -> None:
    kind, stream = name.rsplit("-", 1)
    make, before, after = STREAMS[stream]
    delays, false_alarms = [], 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        stationary = make(rng, before, BEFORE + AFTER)
        false_alarms += _first_alarm(DETECTORS[name](), stationary) is not None
        detector = DETECTORS[name]()
        assert _first_alarm(detector, make(rng, before, BEFORE)) is None, seed
        delay = _first_alarm(detector, make(rng, after, AFTER))
        assert delay is not None and delay <= BOUND[kind], (seed, delay)
        delays.append(delay)
    assert false_alarms == 0
    assert np.median(delays) < BOUND[kind] / 2


def test_adwin_window_is_the_latest_values_in_logarithmic_buckets() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate((_correctness(rng, 0.8, 3000), _correctness(rng, 0.2, 3000)))
    detector = Adwin(clock=1)
    alarms = [i for i, value in enumerate(values.tolist()) if detector.update(value)]
    assert alarms and 3000 <= alarms[0] < 3300
    # the window holds exactly the most recent values, mostly after the change
    window = values[-detector.width :]
    assert detector.mean == pytest.approx(window.mean())
    assert detector.variance == pytest.approx(window.var())
    assert 1000 < detector.width < 3300 and detector.detections == len(alarms)
    # a long stationary stream: the window keeps everything in O(M log n) buckets
    long = Adwin()
    for value in _correctness(rng, 0.5, 100_000).tolist():
        long.update(value)
    assert long.width == 100_000
    assert long.buckets <= long.max_buckets * (math.log2(100_000 / long.max_buckets) + 2)


def test_page_hinkley_watches_the_direction_it_is_given_and_restarts_after_an_alarm() -> None:
    rng = np.random.default_rng(1)
    rising = np.concatenate((_correctness(rng, 0.3, 500), _correctness(rng, 0.7, 500)))
    assert _first_alarm(PageHinkley(direction="down"), rising) is None
    both = PageHinkley()
    alarm = _first_alarm(both, rising)
    assert alarm is not None and alarm >= 500
    assert both.n == 0 and both.detections == 1
    with pytest.raises(ValueError, match="direction"):
        PageHinkley(direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Adwin().update(math.nan)


def test_psi_and_ks_tell_the_same_distribution_from_a_shifted_one() -> None:
    """50 seeds: a sample of the reference distribution stays under the usual PSI reading of
    "stable" (0.1) and KS rejects it at 5% about 5% of the time; a 0.75-sd shift is over
    the "shifted" reading (0.25) and KS rejects it every time. KS agrees with scipy."""
    rejected_same = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        reference = rng.normal(0.0, 1.0, 5000)
        same, shifted = rng.normal(0.0, 1.0, 1000), rng.normal(0.75, 1.0, 1000)
        assert psi(reference, same) < 0.1 and psi(reference, shifted) > 0.25
        for current in (same, shifted):
            statistic, p_value = ks_2samp(reference, current)
            expected = stats.ks_2samp(reference, current, method="asymp")
            assert statistic == pytest.approx(expected.statistic, abs=1e-12)
            assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
        rejected_same += ks_2samp(reference, same)[1] <= 0.05
        assert ks_2samp(reference, shifted)[1] < 1e-6
    assert stats.binom.sf(rejected_same - 1, 50, 0.05) > 0.01, rejected_same


def test_psi_by_hand_with_empty_bins_and_nans() -> None:
    reference = np.array([1.0, 2.0, 3.0, 4.0])  # quartile edges 1.75, 2.5, 3.25
    assert psi_edges(reference, bins=4).tolist() == [1.75, 2.5, 3.25]
    # current: bins (-inf, 1.75] and (3.25, inf) get half each, the middle two none
    current = np.array([1.0, 1.0, 9.0, 9.0, np.nan])
    r, c = 0.25, 0.5
    expected = 2 * (c - r) * math.log(c / r) + 2 * (1e-4 - r) * math.log(1e-4 / r)
    assert psi(reference, current, bins=4) == pytest.approx(expected)
    # a constant reference column still sees values move away from it
    assert psi(np.ones(100), np.full(100, 2.0)) > 1.0
    assert psi(np.ones(100), np.ones(10)) == 0.0
    assert psi(np.array([np.nan]), current) == 0.0


def test_feature_drift_names_each_column() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(2000, 2))
    current = np.column_stack((rng.normal(size=500), rng.normal(3.0, 1.0, 500)))
    current[:10, 0] = np.nan  # warm-up rows of a feature
    steady, moved = feature_drift(reference, current, ["rsi_14", "ret_1"])
    assert (steady.feature, steady.n_reference, steady.n_current) == ("rsi_14", 2000, 490)
    assert steady.psi < 0.1 and steady.ks_p_value > 0.01
    assert moved.feature == "ret_1" and moved.psi > 1.0 and moved.ks_statistic > 0.8
    with pytest.raises(ValueError, match=r"\(rows, 3\)"):
        feature_drift(reference, current, ["a", "b", "c"])
