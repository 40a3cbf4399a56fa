"""The engine's checks of the numbers a user passes to training, evaluation, prediction,
backtests and live sessions, shared by every face (CLI, API): an error names the option,
the bad value and the valid range, and NaN is refused everywhere (a NaN confidence used to
act like the most permissive one). Model parameters are checked by the model kinds
(`models.params`)."""

from __future__ import annotations

from typing import Any

from models.params import COUNT, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, check_range

# The confidence threshold a user may set on a live session. It lives here, at the bottom of
# the engine, because both the session checks below and the live engine's clamp read it.
THRESHOLD_MIN, THRESHOLD_MAX = 0.34, 0.95
THRESHOLD_STEP = 0.05  # one press of the TUI's +/- keys


def check_confidence(value: float, option: str = "--threshold") -> float:
    """A probability a buy/sell must reach: a number in [0, 1]."""
    check_range(option, value, UNIT_INTERVAL)
    return float(value)


def check_model_params(kind: str, params: dict[str, Any]) -> None:
    """A model kind's parameters as `train` takes them, named as its options (`--n-estimators`);
    the kind itself checks them again on construction (named as parameters)."""
    from models import MODEL_KINDS

    ranges: dict[str, Range] = getattr(MODEL_KINDS.get(kind), "ranges", {})
    for key, valid in ranges.items():
        if params.get(key) is not None:
            check_range(f"--{key.replace('_', '-')}", params[key], valid)


def check_search_args(*, trials: int, n_jobs: int, tune_folds: int, timeout: float | None) -> None:
    """The hyperparameter search's options (trials 0: no search)."""
    check_range("--trials", trials, Range(low=0, integer=True))
    if n_jobs != -1:  # joblib's one job per core
        check_range("--jobs", n_jobs, COUNT, also="-1 (one job per core)")
    if tune_folds != 0:
        check_range(
            "--tune-folds", tune_folds, Range(low=2, integer=True), also="0 (the validation part)"
        )
    if timeout is not None:
        check_range("--timeout", timeout, POSITIVE)


def check_training_args(
    *,
    trials: int,
    n_jobs: int,
    tune_folds: int,
    timeout: float | None,
    threshold: float,
    fee: float,
    label_threshold: float,
) -> None:
    """The run-level options of `train_model` (the model's own are checked by its kind)."""
    check_search_args(trials=trials, n_jobs=n_jobs, tune_folds=tune_folds, timeout=timeout)
    check_confidence(threshold, "confidence threshold")
    check_range("--fee", fee, Range(low=0, high=1, high_open=True))
    # the label threshold, a forward log return: beyond 1 (+172 %) no candle is buy or sell
    check_range("--threshold", label_threshold, UNIT_INTERVAL)


def check_session_args(*, threshold: float, replay_delay: float, replay_candles: int) -> None:
    """A live or replayed session's options: the confidence within what the live engine
    accepts, a finite non-negative replay delay, a non-negative replay length."""
    check_range("--threshold", threshold, Range(low=THRESHOLD_MIN, high=THRESHOLD_MAX))
    check_range("--replay-delay", replay_delay, NON_NEGATIVE)
    check_range("--replay-candles", replay_candles, Range(low=0, integer=True))
