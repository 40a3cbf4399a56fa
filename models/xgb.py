"""XGBoost classifier (hist; CUDA when available) saved as XGBoost JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import xgboost as xgb

from models.base import CLASSES, Model, check_features

DEFAULTS: dict[str, Any] = {
    "n_estimators": 300,
    "max_depth": 5,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 5.0,
    "early_stopping_rounds": 30,
    "seed": 0,
    "device": "cpu",
    "n_jobs": 0,
}


class XGBoostModel(Model):
    kind = "xgboost"

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown xgboost parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.params = {**DEFAULTS, **params}

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def device(self) -> str:
        return str(self.params["device"])

    def _estimator(self) -> xgb.XGBClassifier:
        p = self.params
        return xgb.XGBClassifier(
            n_estimators=p["n_estimators"],
            max_depth=p["max_depth"],
            learning_rate=p["learning_rate"],
            subsample=p["subsample"],
            colsample_bytree=p["colsample_bytree"],
            min_child_weight=p["min_child_weight"],
            early_stopping_rounds=p["early_stopping_rounds"],
            random_state=p["seed"],
            device=p["device"],
            n_jobs=p["n_jobs"] or None,
            tree_method="hist",
            objective="multi:softprob",
            num_class=len(CLASSES),
            eval_metric="mlogloss",
        )

    def fit(self, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> Self:
        X_train = check_features(X_train, where="X_train")
        X_val = check_features(X_val, X_train.shape[1], where="X_val")
        self.estimator_ = self._estimator()
        self.estimator_.fit(X_train, y_train, eval_set=[(X_val, y_val)], verbose=False)
        self.n_features_ = X_train.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = check_features(X, self.n_features_)
        return self.estimator_.predict_proba(X)

    def feature_importance(self) -> dict[int, float]:
        return {i: float(v) for i, v in enumerate(self.estimator_.feature_importances_)}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.estimator_.save_model(directory / "model.json")
        meta = {"params": self.params, "n_features": self.n_features_}
        (directory / "meta.json").write_text(json.dumps(meta, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        model = cls(**meta["params"])
        model.estimator_ = xgb.XGBClassifier()
        model.estimator_.load_model(directory / "model.json")
        model.n_features_ = int(meta["n_features"])
        return model
