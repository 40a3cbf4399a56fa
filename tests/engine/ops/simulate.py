"""A synthetic shadow record for the promotion gate: a market whose true class probabilities
change every candle, a champion and a challenger that both see them through their own noise,
their per-candle log-losses on the same candles and the returns of the trades each acts on.
Equal noise is equal skill (a challenger truly no better); less noise is a better model.
Shared by tests/engine/ops/test_gate.py and scripts/bench_gate.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.ops.stats import log_loss_rows

FEE = 0.0005  # per trade, a side's taker fee on Upbit KRW markets


@dataclass(frozen=True)
class ShadowRecord:
    champion_loss: np.ndarray
    challenger_loss: np.ndarray
    champion_trades: np.ndarray
    challenger_trades: np.ndarray


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ShadowStream:
    """The candles behind a shadow record: each one's true class (CLASSES index), the
    market's move over the horizon, and both models' probabilities."""

    labels: np.ndarray
    move: np.ndarray
    champion_proba: np.ndarray
    challenger_proba: np.ndarray


def shadow_stream(
    seed: int,
    n_candles: int = 2000,
    champion_noise: float = 1.0,
    challenger_noise: float = 1.0,
    signal: float = 1.0,
) -> ShadowStream:
    """The market and both models' probabilities, candle by candle (what `shadow_record`
    scores; scripts/bench_gate.py stores it as live predictions to run the real path)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, signal, (n_candles, 3))  # sell, hold, buy logits of the market
    labels = (rng.random(n_candles)[:, None] > np.cumsum(_softmax(truth), axis=1)).sum(axis=1)
    size = np.abs(rng.normal(0.004, 0.002, n_candles))
    move = np.where(
        labels == 2, size, np.where(labels == 0, -size, rng.normal(0, 0.001, n_candles))
    )
    champion = _softmax(truth + rng.normal(0.0, champion_noise, truth.shape))
    challenger = _softmax(truth + rng.normal(0.0, challenger_noise, truth.shape))
    return ShadowStream(labels, move, champion, challenger)


def shadow_record(
    seed: int,
    n_candles: int = 2000,
    champion_noise: float = 1.0,
    challenger_noise: float = 1.0,
    act_at: float = 0.55,
    signal: float = 1.0,
) -> ShadowRecord:
    """Both models on the same `n_candles`; a model acts (buys or sells one candle) when its
    probability of buy or sell reaches `act_at`."""
    stream = shadow_stream(seed, n_candles, champion_noise, challenger_noise, signal)

    def model(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acted = np.maximum(proba[:, 0], proba[:, 2]) >= act_at
        side = np.where(proba[:, 2] >= proba[:, 0], 1.0, -1.0)
        return log_loss_rows(proba, stream.labels), (side * stream.move - FEE)[acted]

    champion_loss, champion_trades = model(stream.champion_proba)
    challenger_loss, challenger_trades = model(stream.challenger_proba)
    return ShadowRecord(champion_loss, challenger_loss, champion_trades, challenger_trades)
