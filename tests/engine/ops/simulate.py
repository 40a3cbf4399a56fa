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
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, signal, (n_candles, 3))  # sell, hold, buy logits of the market
    labels = (rng.random(n_candles)[:, None] > np.cumsum(_softmax(truth), axis=1)).sum(axis=1)
    size = np.abs(rng.normal(0.004, 0.002, n_candles))
    move = np.where(
        labels == 2, size, np.where(labels == 0, -size, rng.normal(0, 0.001, n_candles))
    )

    def model(noise: float) -> tuple[np.ndarray, np.ndarray]:
        proba = _softmax(truth + rng.normal(0.0, noise, truth.shape))
        acted = np.maximum(proba[:, 0], proba[:, 2]) >= act_at
        side = np.where(proba[:, 2] >= proba[:, 0], 1.0, -1.0)
        return log_loss_rows(proba, labels), (side * move - FEE)[acted]

    champion_loss, champion_trades = model(champion_noise)
    challenger_loss, challenger_trades = model(challenger_noise)
    return ShadowRecord(champion_loss, challenger_loss, champion_trades, challenger_trades)
