"""Ensembles of fitted member models: hard/soft/weighted voting, stacking and blending.

Saved as a JSON manifest (method, weights, meta-learner coefficients) plus member
references (registry id and ref, kind, sha256, size); members are found by their sha256 in
the store that loads the ensemble, and verified, by whoever loads it. The meta-learner of `stack` learns from out-of-fold member predictions
made in time order (see engine.training.ensembles); `blend` learns from the validation part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from models.base import CLASSES, EpochHook, Model, check_features, check_labels

METHODS = ("vote", "soft-vote", "weighted", "stack", "blend")
EPS = 1e-6


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def meta_features(P: np.ndarray) -> np.ndarray:
    """(n, members, 3) probabilities → (n, members * 3) log-probabilities for the meta-learner."""
    return np.log(np.clip(P, EPS, 1.0)).reshape(len(P), -1)


class EnsembleModel(Model):
    kind = "ensemble"

    def __init__(
        self,
        method: str = "soft-vote",
        members: Sequence[Model] = (),
        refs: Sequence[dict[str, Any]] = (),
        C: float = 1.0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(
                f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}"
            )
        self.method = method
        self.members = list(members)
        # no file path: it would tie the ensemble to the store that trained it
        self.refs = [{k: v for k, v in r.items() if k != "artifact"} for r in refs]
        self.C = C
        self.context = max((m.context for m in self.members), default=0)
        for member in self.members:
            if member.task != "classification":
                raise ValueError(
                    f"ensemble members must be classifiers; a {member.kind} {member.task} came"
                )

    def get_params(self) -> dict[str, Any]:
        return {"method": self.method, "C": self.C, "members": self.refs}

    def member_probs(self, X: np.ndarray) -> np.ndarray:
        """(n, members, 3) probabilities of every member for the rows of X."""
        if not self.members:
            raise ValueError("the ensemble has no members")
        X = check_features(X)
        return np.stack([m.predict_proba(X) for m in self.members], axis=1)

    def fit(
        self,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        on_epoch: EpochHook | None = None,
        checkpoint: Path | None = None,
        oof: tuple[np.ndarray, np.ndarray] | None = None,
        val_probs: np.ndarray | None = None,
    ) -> Self:
        """Members are already fitted; this fits the combiner. `oof`: (member probabilities,
        labels) made out of fold in time order, which `stack` needs. `val_probs`: the
        members' (n, members, 3) probabilities for the rows of X_val when the caller made them
        with context X_val lacks (sequence members read the rows before the part)."""
        m = len(self.members)
        self.weights_: np.ndarray = np.full(m, 1.0 / max(m, 1))
        if self.method in ("weighted", "blend"):
            y_val = check_labels(y_val, "classification", len(X_val), where="y_val")
            P_val = self.member_probs(X_val) if val_probs is None else val_probs
        if self.method == "weighted":
            # weight by validation skill over chance: accuracy minus the majority share
            prior = np.bincount(y_val, minlength=len(CLASSES)).max() / max(len(y_val), 1)
            skill = np.array([(P_val[:, i].argmax(1) == y_val).mean() - prior for i in range(m)])
            skill = np.clip(skill, 0.0, None) + 1e-3
            self.weights_ = skill / skill.sum()
        elif self.method == "blend":
            self._fit_meta(P_val, y_val)
        elif self.method == "stack":
            if oof is None:
                raise ValueError(
                    "stacking needs out-of-fold member predictions made in time order;"
                    " train it through engine.training.train (walk-forward folds)"
                )
            P_oof, y_oof = oof
            self._fit_meta(P_oof, check_labels(y_oof, "classification", len(P_oof)))
        return self

    def _fit_meta(self, P: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:
            raise ValueError("the meta-learner needs at least two classes among its rows")
        meta = LogisticRegression(C=self.C, max_iter=1000)
        meta.fit(meta_features(P), y)
        coef: np.ndarray = np.zeros((len(CLASSES), P.shape[1] * len(CLASSES)))
        # classes never seen get ~0 probability
        intercept: np.ndarray = np.full(len(CLASSES), -30.0)
        classes = meta.classes_.astype(int)
        if len(classes) == 2:  # sklearn's binary form: one row for the second class
            coef[classes[1]], intercept[classes[1]] = meta.coef_[0], meta.intercept_[0]
            coef[classes[0]], intercept[classes[0]] = 0.0, 0.0
        else:
            coef[classes], intercept[classes] = meta.coef_, meta.intercept_
        self.coef_, self.intercept_ = coef, intercept

    def combine(self, P: np.ndarray) -> np.ndarray:
        """(n, members, 3) member probabilities → (n, 3) ensemble probabilities."""
        if self.method == "vote":
            votes = np.eye(len(CLASSES))[P.argmax(axis=2)]  # (n, m, 3) one-hot
            return votes.mean(axis=1)
        if self.method in ("soft-vote", "weighted"):
            return np.einsum("nmc,m->nc", P, self.weights_)
        return _softmax(meta_features(P) @ self.coef_.T + self.intercept_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.combine(self.member_probs(X))

    def predict_last(self, X: np.ndarray) -> np.ndarray:
        X = check_features(X)
        latest = np.stack([m.predict_last(X) for m in self.members])[None]  # (1, members, 3)
        return self.combine(latest)[0]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {
            "kind": self.kind,
            "method": self.method,
            "C": self.C,
            "weights": self.weights_.tolist(),
            "members": self.refs,
        }
        if hasattr(self, "coef_"):
            manifest["meta"] = {"coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}
        (directory / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))

    @classmethod
    def load(
        cls, directory: Path, load_member: Callable[[dict[str, Any]], Model] | None = None
    ) -> Self:
        """Rebuild from the manifest; `load_member(ref)` loads (and verifies) each member."""
        manifest = json.loads((directory / "manifest.json").read_text())
        if load_member is None:
            raise ValueError("an ensemble needs a loader for its members (engine.live.inference)")
        members = [load_member(ref) for ref in manifest["members"]]
        model = cls(manifest["method"], members, manifest["members"], float(manifest["C"]))
        model.weights_ = np.asarray(manifest["weights"], dtype=np.float64)
        if "meta" in manifest:
            model.coef_ = np.asarray(manifest["meta"]["coef"], dtype=np.float64)
            model.intercept_ = np.asarray(manifest["meta"]["intercept"], dtype=np.float64).ravel()
        return model
