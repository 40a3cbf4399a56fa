"""XGBoost classifier and regressor (hist; CUDA when available), saved as XGBoost JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self, cast

import numba
import numpy as np
import xgboost as xgb

from models.base import (
    CLASSES,
    EpochHook,
    Model,
    check_features,
    check_labels,
    check_task,
    return_to_proba,
)
from models.devices import resolve_device
from models.params import COUNT, NON_NEGATIVE, POSITIVE, Range, check_ranges

DEFAULTS: dict[str, Any] = {
    "task": "classification",
    "n_estimators": 300,
    "max_depth": 5,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 5.0,
    "reg_lambda": 1.0,
    "early_stopping_rounds": 30,
    "seed": 0,
    "device": "auto",
    "n_jobs": 0,
    "threshold": 0.001,  # regression: the label threshold its probabilities are measured against
}
# Valid values of the numeric parameters (a 0-round model would register untrained).
RANGES: dict[str, Range] = {
    "n_estimators": COUNT,
    "max_depth": COUNT,
    "learning_rate": POSITIVE,
    "subsample": Range(low=0, high=1, low_open=True),
    "colsample_bytree": Range(low=0, high=1, low_open=True),
    "min_child_weight": NON_NEGATIVE,
    "reg_lambda": NON_NEGATIVE,
    "early_stopping_rounds": COUNT,
    "n_jobs": Range(low=0, integer=True),
    "threshold": NON_NEGATIVE,
}


class XGBoostModel(Model):
    kind = "xgboost"
    ranges = RANGES

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown xgboost parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}"
            )
        self.params = {**DEFAULTS, **params}
        self.task = check_task(self.params["task"])
        check_ranges(self.kind, self.params, self.ranges)

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def device(self) -> str:
        return resolve_device(str(self.params["device"]))

    def _estimator(self, on_epoch: EpochHook | None = None) -> xgb.XGBModel:
        p = self.params
        common: dict[str, Any] = {
            "n_estimators": p["n_estimators"],
            "max_depth": p["max_depth"],
            "learning_rate": p["learning_rate"],
            "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"],
            "min_child_weight": p["min_child_weight"],
            "reg_lambda": p["reg_lambda"],
            "early_stopping_rounds": p["early_stopping_rounds"],
            "random_state": p["seed"],
            "device": self.device,
            "n_jobs": p["n_jobs"] or None,
            "tree_method": "hist",
        }
        if on_epoch is not None:
            common["callbacks"] = [_RoundReporter(on_epoch, int(p["n_estimators"]))]
        if self.task == "regression":
            return xgb.XGBRegressor(objective="reg:squarederror", eval_metric="rmse", **common)
        return xgb.XGBClassifier(
            objective="multi:softprob",
            num_class=len(CLASSES),
            eval_metric="mlogloss",
            **common,
        )

    def fit(
        self,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        on_epoch: EpochHook | None = None,
        checkpoint: Path | None = None,
    ) -> Self:
        X_train = check_features(X_train, where="X_train")
        X_val = check_features(X_val, X_train.shape[1], where="X_val")
        y_train = check_labels(y_train, self.task, len(X_train), where="y_train")
        y_val = check_labels(y_val, self.task, len(X_val), where="y_val")
        estimator = self._estimator(on_epoch)
        self.__dict__.pop("_table", None)  # the compiled walk of the previous fit's trees
        estimator.fit(X_train, y_train, eval_set=[(X_val, y_val)], verbose=False)
        self.booster_ = estimator.get_booster()
        self.best_iteration_ = int(
            getattr(estimator, "best_iteration", self.params["n_estimators"] - 1)
        )
        self.n_features_ = X_train.shape[1]
        if self.task == "regression":
            residual = y_val - self._raw(X_val)
            self.sigma_ = float(np.std(residual)) if len(residual) else float(np.std(y_train))
        return self

    def update(self, X: np.ndarray, y: np.ndarray, *, rounds: int) -> XGBoostModel:
        """A new model: this one's boosting continued for `rounds` more rounds on (X, y) with
        the same parameters (online update); this one is left untouched.

        It starts from the rounds this model predicts with (up to its early-stopping best),
        so its first rounds give exactly this model's output; every new round is kept (no
        validation part to stop on: the bound is `rounds`). A regressor keeps its
        validation residual `sigma_` (the update's rows are in-sample)."""
        if not 1 <= int(rounds) <= 10_000:
            raise ValueError(f"rounds must be 1 to 10000, got {rounds}")
        X = check_features(X, self.n_features_, where="X")
        y = check_labels(y, self.task, len(X), where="y")
        if len(X) == 0:
            raise ValueError("an online update needs at least one row")
        params = {
            k: v
            for k, v in self._estimator().get_xgb_params().items()
            if v is not None and k != "device"
        }
        params["device"] = "cpu" if self.device == "cpu" else self.device
        start = self.booster_[: self.best_iteration_ + 1]  # a copy: this model keeps its own
        start.set_param({"device": params["device"]})
        booster = xgb.train(
            params, xgb.DMatrix(X, label=y), num_boost_round=int(rounds), xgb_model=start
        )
        booster.set_param({"device": "cpu"})
        new = type(self)(**self.params)
        new.booster_ = booster
        new.best_iteration_ = booster.num_boosted_rounds() - 1
        new.n_features_ = self.n_features_
        if hasattr(self, "sigma_"):
            new.sigma_ = self.sigma_
        return new

    def _raw(self, X: np.ndarray) -> np.ndarray:
        # inplace_predict skips the DMatrix copy: single-row latency is ~10x lower
        return np.asarray(
            self.booster_.inplace_predict(X, iteration_range=(0, self.best_iteration_ + 1))
        )

    def predict_last(self, X: np.ndarray) -> np.ndarray:
        """(3,) probabilities of the newest row, through the compiled tree walk (`TreeTable`):
        equal to predict_proba(X)[-1] to float32 rounding, about 10x faster for one row."""
        X = check_features(X, self.n_features_)
        return self.predict_rows(X[-1:])[0]

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        """(n, 3) probabilities of each row through the compiled tree walk in one call: each
        row's exactly its `predict_last` (the same float32 walk and float64 softmax), whatever
        the number of rows, and without the ~0.2 ms set-up `inplace_predict` pays per call."""
        X = check_features(X, self.n_features_)
        table = self.__dict__.get("_table")  # built once per fit or load
        if table is None:
            table = self._table = TreeTable(self.booster_, self._tree_count())
        margin = table.margins_rows(X).astype(np.float64)
        if self.task == "regression":
            return return_to_proba(margin[:, 0], self.sigma_, float(self.params["threshold"]))
        probs = np.exp(margin - margin.max(axis=1, keepdims=True))
        return np.asarray(probs / probs.sum(axis=1, keepdims=True))

    def _tree_count(self) -> int:
        """Trees of rounds 0 ... best_iteration_ (one per class and round when classifying)."""
        per_round = 1 if self.task == "regression" else len(CLASSES)
        return (self.best_iteration_ + 1) * per_round

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = check_features(X, self.n_features_)
        if self.task == "regression":
            return self._raw(X).astype(np.float64)
        return self._raw(X).argmax(axis=1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = check_features(X, self.n_features_)
        raw = self._raw(X)
        if self.task == "regression":
            return return_to_proba(raw, self.sigma_, float(self.params["threshold"]))
        probs = raw.reshape(len(X), len(CLASSES)).astype(np.float64)
        return probs / probs.sum(axis=1, keepdims=True)

    def feature_importance(self) -> dict[int, float]:
        gain = {
            name: float(cast(float, value))
            for name, value in self.booster_.get_score(importance_type="gain").items()
        }
        total = sum(gain.values()) or 1.0
        return {i: float(gain.get(f"f{i}", 0.0)) / total for i in range(self.n_features_)}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(directory / "model.json")
        meta = {
            "params": self.params,
            "n_features": self.n_features_,
            "best_iteration": self.best_iteration_,
            "sigma": getattr(self, "sigma_", None),
        }
        (directory / "meta.json").write_text(json.dumps(meta, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        params = {k: v for k, v in meta["params"].items() if k in DEFAULTS}
        model = cls(**params)
        model.booster_ = xgb.Booster(model_file=str(directory / "model.json"))
        model.booster_.set_param({"device": "cpu"})
        model.n_features_ = int(meta["n_features"])
        model.best_iteration_ = int(
            meta.get("best_iteration", model.booster_.num_boosted_rounds() - 1)
        )
        if meta.get("sigma") is not None:
            model.sigma_ = float(meta["sigma"])
        return model


class TreeTable:
    """A booster's first `trees` trees as flat arrays, walked by one compiled loop.

    XGBoost's `inplace_predict` spends ~0.2 ms of set-up on every call, whatever the batch;
    the live path predicts one row per candle, and this walk takes ~20 µs for 600 trees.
    Splits compare float32 values with `<` and send NaN the default way, as XGBoost does; the
    intercept is read back from the booster (its margin on a zero row minus the walk's), so
    the margins equal the booster's to float32 rounding (tests/test_models.py,
    test_the_compiled_tree_walk_gives_the_boosters_margins, pins it: early stopping and
    missing values included). Numerical splits only: a booster with categorical splits is
    refused (ValueError).
    """

    def __init__(self, booster: xgb.Booster, trees: int) -> None:
        model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]
        chosen = model["trees"][:trees]
        if any(any(tree.get("split_type", [])) for tree in chosen):
            raise ValueError("the booster has categorical splits; TreeTable walks numerical ones")
        self.trees = len(chosen)
        self.offsets = np.cumsum([0, *(len(t["left_children"]) for t in chosen)]).astype(np.int64)
        self.left = np.concatenate([t["left_children"] for t in chosen]).astype(np.int32)
        self.right = np.concatenate([t["right_children"] for t in chosen]).astype(np.int32)
        self.feature = np.concatenate([t["split_indices"] for t in chosen]).astype(np.int32)
        # a split node's threshold, or a leaf's value
        self.value = np.concatenate([t["split_conditions"] for t in chosen]).astype(np.float32)
        self.default_left = np.concatenate([t["default_left"] for t in chosen]).astype(np.bool_)
        self.group = np.asarray(model["tree_info"][:trees], dtype=np.int32)
        self.outputs = int(self.group.max()) + 1 if len(self.group) else 1
        self.bias = np.zeros(self.outputs, dtype=np.float32)
        zero = np.zeros((1, int(booster.num_features())), dtype=np.float32)
        booster_margin = np.asarray(
            booster.inplace_predict(
                zero, iteration_range=(0, trees // self.outputs), predict_type="margin"
            ),
            dtype=np.float32,
        ).reshape(-1)
        self.bias = booster_margin - self.margins(zero[0])

    def margins(self, row: np.ndarray) -> np.ndarray:
        """(outputs,) float32 margins of one float32 row."""
        out = self.bias.copy()
        _walk(row, self.offsets, self.left, self.right, self.feature, self.value,
              self.default_left, self.group, out)  # fmt: skip
        return out

    def margins_rows(self, rows: np.ndarray) -> np.ndarray:
        """(n, outputs) float32 margins of n float32 rows, in one compiled call."""
        out = np.empty((len(rows), self.outputs), dtype=np.float32)
        _walk_rows(np.ascontiguousarray(rows, dtype=np.float32), self.offsets, self.left,
                   self.right, self.feature, self.value, self.default_left, self.group,
                   self.bias, out)  # fmt: skip
        return out


@numba.njit(cache=True, nogil=True)
def _walk(
    row: np.ndarray,
    offsets: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    feature: np.ndarray,
    value: np.ndarray,
    default_left: np.ndarray,
    group: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    for tree in range(len(offsets) - 1):
        base = offsets[tree]
        node = 0
        while left[base + node] != -1:
            at = base + node
            x = row[feature[at]]
            if np.isnan(x):
                node = left[at] if default_left[at] else right[at]
            elif x < value[at]:
                node = left[at]
            else:
                node = right[at]
        out[group[tree]] += value[base + node]


@numba.njit(cache=True, nogil=True)
def _walk_rows(
    rows: np.ndarray,
    offsets: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    feature: np.ndarray,
    value: np.ndarray,
    default_left: np.ndarray,
    group: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        out[i, :] = bias
        _walk(rows[i], offsets, left, right, feature, value, default_left, group, out[i])


class _RoundReporter(xgb.callback.TrainingCallback):
    """Hands the validation metric to `on_epoch` as boosting goes (about 100 reports a run,
    and the last round), so the run's progress reaches the store while it trains; a
    KeyboardInterrupt raised there stops training."""

    def __init__(self, on_epoch: EpochHook, rounds: int) -> None:
        super().__init__()
        self.on_epoch = on_epoch
        self.every = max(1, rounds // 100)
        self.rounds = rounds

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.rounds:
            metrics = {
                f"val_{name}": float(values[-1])
                for name, values in evals_log.get("validation_0", {}).items()
            }
            self.on_epoch(epoch, metrics)
        return False
