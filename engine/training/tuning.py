"""Hyperparameter search: random trials scored on the validation part (or walk-forward folds
of the training rows), run in parallel with joblib; the search space is data, printed and
stored with the model."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from engine.research.dataset import Dataset
from engine.research.splits import Split, WalkForwardSpec, walk_forward
from engine.training.batch import predict_rows, predict_values
from models import create_model

# name: ("int", low, high) | ("float", low, high) | ("log", low, high) | ("choice", [values])
SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "xgboost": {
        "max_depth": ("int", 3, 8),
        "learning_rate": ("log", 0.01, 0.3),
        "subsample": ("float", 0.5, 1.0),
        "colsample_bytree": ("float", 0.4, 1.0),
        "min_child_weight": ("log", 1.0, 50.0),
        "reg_lambda": ("log", 0.1, 10.0),
    },
    "lstm": {
        "hidden": ("choice", [32, 64, 128]),
        "layers": ("choice", [1, 2]),
        "dropout": ("float", 0.0, 0.3),
        "lr": ("log", 3e-4, 3e-3),
        "window": ("choice", [30, 60]),
    },
    "transformer": {
        "hidden": ("choice", [32, 64]),
        "layers": ("choice", [1, 2]),
        "heads": ("choice", [2, 4]),
        "dropout": ("float", 0.0, 0.3),
        "lr": ("log", 3e-4, 3e-3),
        "window": ("choice", [30, 60]),
    },
}


def sample(space: dict[str, tuple[Any, ...]], rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (how, *args) in space.items():
        if how == "int":
            out[name] = int(rng.integers(args[0], args[1] + 1))
        elif how == "float":
            out[name] = float(rng.uniform(args[0], args[1]))
        elif how == "log":
            out[name] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
        elif how == "choice":
            out[name] = args[0][int(rng.integers(len(args[0])))]
        else:
            raise ValueError(f"unknown search dimension {how!r} for {name}")
    return out


def describe(space: dict[str, tuple[Any, ...]]) -> list[str]:
    lines = []
    for name, (how, *args) in space.items():
        if how == "choice":
            lines.append(f"{name}: one of {args[0]}")
        else:
            scale = " (log scale)" if how == "log" else ""
            lines.append(f"{name}: {how} in [{args[0]}, {args[1]}]{scale}")
    return lines


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    score: float | None  # validation loss (lower is better); None: skipped at the timeout
    seconds: float


@dataclass
class TuneResult:
    kind: str
    metric: str
    space: dict[str, list[Any]]
    trials: list[Trial] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    best_score: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "space": self.space,
            "best": self.best,
            "best_score": self.best_score,
            "trials": [asdict(t) for t in self.trials],
        }


def _loss(task: str, y: np.ndarray, model: Any, X: np.ndarray, rows: np.ndarray) -> float:
    if task == "regression":
        return float(np.mean((predict_values(model, X, rows) - y) ** 2))
    probs = np.clip(predict_rows(model, X, rows), 1e-12, 1.0)
    return float(-np.mean(np.log(probs[np.arange(len(rows)), y.astype(int)])))


def _run_trial(
    number: int,
    kind: str,
    params: dict[str, Any],
    data: Dataset,
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    deadline: float | None,
) -> Trial:
    started = time.monotonic()
    if deadline is not None and started > deadline:
        return Trial(number, params, None, 0.0)
    losses = []
    task = params.get("task", "classification")
    for train, validation, score_rows in parts:
        model = create_model(kind, **params)
        model.fit(data.X[train], data.y[train], data.X[validation], data.y[validation])
        losses.append(_loss(task, data.y[score_rows], model, data.X, score_rows))
    return Trial(number, params, float(np.mean(losses)), time.monotonic() - started)


def tune(
    kind: str,
    base: dict[str, Any],
    data: Dataset,
    split: Split,
    *,
    trials: int,
    timeout: float | None = None,
    n_jobs: int = 1,
    seed: int = 0,
    folds: int = 0,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Random search of `trials` parameter sets over SPACES[kind] on top of `base`.

    Each trial trains on the training part and is scored by its loss (log-loss or MSE) on
    the validation part, or, with `folds` >= 2, by the mean loss over walk-forward folds of
    the training part. Trials not started before `timeout` seconds are skipped.
    """
    if kind not in SPACES:
        raise ValueError(f"no search space for {kind!r}; tuning covers {', '.join(SPACES)}")
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    space = SPACES[kind]
    rng = np.random.default_rng(seed)
    candidates = [{**base, **sample(space, rng)} for _ in range(trials)]
    if kind == "xgboost" and n_jobs != 1:
        for c in candidates:
            c["n_jobs"] = 1  # one core per trial; trials run side by side
    if folds >= 2:
        train_rows = split.train
        label_end = data.label_end[train_rows] if data.label_end is not None else None
        parts = [
            (
                train_rows[f.train],
                train_rows[f.validation] if len(f.validation) else train_rows[f.train[-1:]],
                train_rows[f.test],
            )
            for f in walk_forward(
                len(train_rows),
                WalkForwardSpec(folds=folds),
                ts=data.ts[train_rows],
                label_end=label_end,
            )
        ]
    else:
        parts = [(split.train, split.validation, split.validation)]
    metric = "mse" if base.get("task") == "regression" else "log_loss"
    result = TuneResult(kind, metric, {k: list(v) for k, v in space.items()})
    deadline = time.monotonic() + timeout if timeout else None
    jobs = (
        delayed(_run_trial)(i, kind, c, data, parts, deadline) for i, c in enumerate(candidates)
    )
    runner = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    for trial in runner(jobs):
        result.trials.append(trial)
        if trial.score is not None and trial.score < result.best_score:
            result.best_score, result.best = trial.score, trial.params
        if on_trial is not None:
            on_trial(trial)
    result.trials.sort(key=lambda t: t.number)
    if not result.best:
        raise ValueError(f"no trial finished within the {timeout}s timeout; raise --timeout")
    return result
