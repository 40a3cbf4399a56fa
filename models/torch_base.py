"""Shared PyTorch machinery for sequence models over windows of the feature matrix.

Row t's sample is the window of rows t - window + 1 .. t (a strided view, no copy, no
Python loop). Features are standardised with statistics of the training rows only, saved
with the model. Training: AdamW, early stopping on the validation loss, AMP on CUDA only,
seeded so CPU runs repeat bit for bit; a checkpoint after every epoch lets a run resume.
Saved as a `state_dict` (`torch.save`, loaded with `weights_only=True`) plus JSON metadata.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from models.base import (
    CLASSES,
    EpochHook,
    Model,
    Standardizer,
    check_features,
    check_labels,
    check_task,
    return_to_proba,
)
from models.devices import resolve_device
from models.params import COUNT, NON_NEGATIVE, POSITIVE, Range, check_ranges

TORCH_DEFAULTS: dict[str, Any] = {
    "task": "classification",
    "window": 60,
    "hidden": 64,
    "layers": 2,
    "dropout": 0.1,
    "epochs": 20,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "patience": 3,
    "seed": 0,
    "device": "auto",
    "threshold": 0.001,  # regression: the label threshold its probabilities are measured against
    "predict_batch": 4096,
}
# Valid values of the numeric parameters (0 epochs would register an untrained network).
TORCH_RANGES: dict[str, Range] = {
    "window": COUNT,
    "hidden": COUNT,
    "layers": COUNT,
    "heads": COUNT,
    "dropout": Range(low=0, high=1, high_open=True),
    "epochs": COUNT,
    "batch_size": COUNT,
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "patience": Range(low=0, integer=True),
    "threshold": NON_NEGATIVE,
    "predict_batch": COUNT,
}


class CheckpointError(ValueError):
    """A training checkpoint cannot be resumed from; the message names the file."""


def windows(X: np.ndarray, window: int, *, pad: bool) -> np.ndarray:
    """(n', window, features) view of consecutive rows; with `pad`, the first row is repeated
    window - 1 times in front so there is one window per row (n' = n), else n' = n - window + 1."""
    if pad and window > 1:
        X = np.concatenate([np.repeat(X[:1], window - 1, axis=0), X])
    if len(X) < window:
        return np.empty((0, window, X.shape[1]), dtype=X.dtype)
    return sliding_window_view(X, (window, X.shape[1]))[:, 0]


@contextlib.contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms for the duration, restoring the caller's setting."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on, warn_only=False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


class SequenceModel(Model):
    """A torch network reading a window of feature rows; subclasses build the network."""

    extra_defaults: ClassVar[dict[str, Any]] = {}
    ranges: ClassVar[dict[str, Range]] = TORCH_RANGES

    def __init__(self, **params: Any) -> None:
        defaults = {**TORCH_DEFAULTS, **self.extra_defaults}
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(
                f"unknown {self.kind} parameters {sorted(unknown)}; known: {sorted(defaults)}"
            )
        self.params = {**defaults, **params}
        self.task = check_task(self.params["task"])
        check_ranges(self.kind, self.params, self.ranges)
        self.context = int(self.params["window"]) - 1

    # --- subclasses -------------------------------------------------------------------------
    def build(self, n_features: int, n_out: int) -> nn.Module:
        raise NotImplementedError

    # --- interface --------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def device(self) -> str:
        return resolve_device(str(self.params["device"]))

    @property
    def n_out(self) -> int:
        return 1 if self.task == "regression" else len(CLASSES)

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
        p = self.params
        window = int(p["window"])
        X_train = check_features(X_train, where="X_train")
        X_val = check_features(X_val, X_train.shape[1], where="X_val")
        y_train = check_labels(y_train, self.task, len(X_train), where="y_train")
        y_val = check_labels(y_val, self.task, len(X_val), where="y_val")
        if len(X_train) < window + 1:
            raise ValueError(f"{len(X_train)} training rows are too few for window {window}")
        self.n_features_ = X_train.shape[1]
        self.scaler_ = Standardizer().fit(X_train)
        if self.task == "regression":
            self.y_mean_, self.y_scale_ = float(y_train.mean()), float(y_train.std() or 1.0)
        device = torch.device(self.device)
        cuda = device.type == "cuda"

        torch.manual_seed(int(p["seed"]))
        self.net_ = self.build(self.n_features_, self.n_out).to(device)
        optimiser = torch.optim.AdamW(
            self.net_.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"])
        )
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
        shuffle = torch.Generator().manual_seed(int(p["seed"]))

        train_w = windows(self.scaler_.transform(X_train), window, pad=False)
        train_y = self._targets(y_train[window - 1 :])
        val_w = windows(self.scaler_.transform(X_val), window, pad=False)
        val_y = self._targets(y_val[window - 1 :]) if len(val_w) else None

        state = {"epoch": 0, "best_loss": math.inf, "best_epoch": -1, "bad_epochs": 0}
        best = copy.deepcopy(self.net_.state_dict())
        if checkpoint is not None and checkpoint.exists():
            try:
                saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch's own text suggests unsafe loading: not shown
                raise CheckpointError(
                    f"checkpoint {checkpoint} is damaged: truncated or not a checkpoint"
                    f" ({type(exc).__name__})"
                ) from exc
            try:
                self.net_.load_state_dict(saved["net"])
                optimiser.load_state_dict(saved["optimiser"])
                best = saved["best"]
                state = {k: saved["state"][k] for k in state}
                shuffle.set_state(saved["shuffle"])
                torch.set_rng_state(saved["rng"])
            except Exception as exc:
                raise CheckpointError(
                    f"checkpoint {checkpoint} does not fit this network ({type(exc).__name__})"
                ) from exc

        loss_fn: nn.Module = nn.MSELoss() if self.task == "regression" else nn.CrossEntropyLoss()
        batch = int(p["batch_size"])
        with deterministic(not cuda):
            for epoch in range(int(state["epoch"]), int(p["epochs"])):
                if state["bad_epochs"] > int(p["patience"]):
                    break
                self.net_.train()
                order = torch.randperm(len(train_w), generator=shuffle)
                total = 0.0
                for start in range(0, len(order), batch):
                    rows = order[start : start + batch].numpy()
                    xb = torch.from_numpy(np.ascontiguousarray(train_w[rows])).to(device)
                    yb = train_y[rows].to(device)
                    optimiser.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=cuda):
                        loss = loss_fn(self._head(self.net_(xb)), yb)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimiser)
                    nn.utils.clip_grad_norm_(self.net_.parameters(), 1.0)
                    scaler.step(optimiser)
                    scaler.update()
                    total += float(loss.detach()) * len(rows)
                metrics = {"train_loss": total / max(len(order), 1)}
                if val_y is not None:
                    metrics.update(self._evaluate(val_w, val_y, loss_fn, device))
                val_loss = metrics.get("val_loss", metrics["train_loss"])
                if val_loss < state["best_loss"] - 1e-6:
                    state.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0)
                    best = copy.deepcopy(self.net_.state_dict())
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch + 1
                if checkpoint is not None:
                    self._checkpoint(checkpoint, optimiser, best, state, shuffle)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
        self.net_.load_state_dict(best)
        self.best_epoch_ = int(state["best_epoch"])
        self.net_.eval()
        self.net_.to("cpu" if not cuda else device)
        if self.task == "regression":
            if len(X_val) > 0:
                residual = y_val - self.predict(X_val)
                self.sigma_ = float(np.std(residual))
            else:
                self.sigma_ = float(self.y_scale_)
        return self

    def update(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 2,
        lr_factor: float = 0.1,
        on_epoch: EpochHook | None = None,
    ) -> Self:
        """A new model: this one's network fine-tuned for `epochs` epochs on (X, y) at
        `lr_factor` times its learning rate (online update); this one is left untouched.

        X holds `window - 1` context rows before the first row to learn from: as in `fit`,
        row t's sample is the window ending at t, so the first window - 1 labels of y are
        not learned. The scaler (and a regressor's target scaling and `sigma_`) stay this
        model's: the inputs mean what they meant to it. Seeded like `fit`; every epoch is
        kept (no validation part to stop on: the bound is `epochs`)."""
        if not 1 <= int(epochs) <= 1000:
            raise ValueError(f"epochs must be 1 to 1000, got {epochs}")
        if not 0 < float(lr_factor) <= 1:
            raise ValueError(f"lr_factor must lie in (0, 1], got {lr_factor}")
        p = self.params
        window = int(p["window"])
        X = check_features(X, self.n_features_, where="X")
        y = check_labels(y, self.task, len(X), where="y")
        if len(X) < window:
            raise ValueError(
                f"{len(X)} rows are too few for window {window}: an online update needs"
                f" {window - 1} context rows and at least one row to learn from"
            )
        new = copy.copy(self)
        new.params = dict(p)
        new.net_ = copy.deepcopy(self.net_).to("cpu")
        device = torch.device(new.device)
        cuda = device.type == "cuda"
        new.net_.to(device)
        torch.manual_seed(int(p["seed"]))
        optimiser = torch.optim.AdamW(
            new.net_.parameters(),
            lr=float(p["lr"]) * float(lr_factor),
            weight_decay=float(p["weight_decay"]),
        )
        shuffle = torch.Generator().manual_seed(int(p["seed"]))
        samples = windows(self.scaler_.transform(X), window, pad=False)
        targets = new._targets(y[window - 1 :])
        loss_fn: nn.Module = nn.MSELoss() if self.task == "regression" else nn.CrossEntropyLoss()
        batch = int(p["batch_size"])
        with deterministic(not cuda):
            for epoch in range(int(epochs)):
                new.net_.train()
                order = torch.randperm(len(samples), generator=shuffle)
                total = 0.0
                for start in range(0, len(order), batch):
                    rows = order[start : start + batch].numpy()
                    xb = torch.from_numpy(np.ascontiguousarray(samples[rows])).to(device)
                    yb = targets[rows].to(device)
                    optimiser.zero_grad(set_to_none=True)
                    loss = loss_fn(new._head(new.net_(xb)), yb)
                    loss.backward()
                    nn.utils.clip_grad_norm_(new.net_.parameters(), 1.0)
                    optimiser.step()
                    total += float(loss.detach()) * len(rows)
                if on_epoch is not None:
                    on_epoch(epoch, {"train_loss": total / max(len(order), 1)})
        new.net_.eval()
        new.net_.to("cpu" if not cuda else device)
        return new

    def _targets(self, y: np.ndarray) -> torch.Tensor:
        if self.task == "regression":
            return torch.from_numpy(((y - self.y_mean_) / self.y_scale_).astype(np.float32))
        return torch.from_numpy(y.astype(np.int64))

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, 0] if self.task == "regression" else out

    def _evaluate(
        self, val_w: np.ndarray, val_y: torch.Tensor, loss_fn: nn.Module, device: torch.device
    ) -> dict[str, float]:
        self.net_.eval()
        outputs = self._forward_all(val_w, device)
        loss = float(loss_fn(self._head(outputs), val_y))
        metrics = {"val_loss": loss}
        if self.task == "classification":
            metrics["val_accuracy"] = float((outputs.argmax(1) == val_y).float().mean())
        return metrics

    def _checkpoint(
        self,
        path: Path,
        optimiser: torch.optim.Optimizer,
        best: dict[str, torch.Tensor],
        state: dict[str, Any],
        shuffle: torch.Generator,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        torch.save(
            {
                "net": self.net_.state_dict(),
                "optimiser": optimiser.state_dict(),
                "best": best,
                "state": {k: float(v) if k == "best_loss" else int(v) for k, v in state.items()},
                "shuffle": shuffle.get_state(),
                "rng": torch.get_rng_state(),
            },
            tmp,
        )
        os.replace(tmp, path)

    @torch.inference_mode()
    def _forward_all(self, w: np.ndarray, device: torch.device) -> torch.Tensor:
        chunk = int(self.params["predict_batch"])
        if len(w) <= chunk:
            return self.net_(torch.from_numpy(np.ascontiguousarray(w)).to(device)).float().cpu()
        parts = [
            self.net_(torch.from_numpy(np.ascontiguousarray(w[i : i + chunk])).to(device))
            .float()
            .cpu()
            for i in range(0, len(w), chunk)
        ]
        return torch.cat(parts)

    def _outputs(self, X: np.ndarray) -> torch.Tensor:
        X = check_features(X, self.n_features_)
        self.net_.eval()
        w = windows(self.scaler_.transform(X), int(self.params["window"]), pad=True)
        return self._forward_all(w, self._net_device())

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = self._outputs(X)
        if self.task == "regression":
            return out[:, 0].numpy().astype(np.float64) * self.y_scale_ + self.y_mean_
        return out.argmax(1).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """One row of probabilities per row of X; the first window - 1 rows see a window
        padded with copies of the first row: pass `context` rows before the ones you need."""
        if self.task == "regression":
            return return_to_proba(self.predict(X), self.sigma_, float(self.params["threshold"]))
        probs = torch.softmax(self._outputs(X).double(), dim=1).numpy()
        return probs / probs.sum(axis=1, keepdims=True)

    def _net_device(self) -> torch.device:
        # a dynamically quantised network keeps its weights as packed params, not parameters
        return next(self.net_.parameters(), torch.empty(0)).device

    def to_device(self, device: str) -> None:
        """Move the fitted network to `device` (`cpu`, `cuda`, `cuda:N`): the inference
        service places a loaded model on its device, and back on the CPU when a CUDA call
        fails. Inputs follow the weights (`_net_device`)."""
        self.net_.to(device)

    def predict_last(self, X: np.ndarray) -> np.ndarray:
        """The newest row's probabilities from its own window only: one sample, not one per
        row of X (the live engine passes exactly the window)."""
        window = int(self.params["window"])
        X = check_features(X, self.n_features_)
        if len(X) < window:
            return self.predict_proba(X)[-1]
        # the net is in eval mode from fit and load; .eval() per call costs 60 us
        sample = self.scaler_.transform(X[-window:])[None]
        device = self._net_device()
        with torch.inference_mode():
            out = self.net_(torch.from_numpy(np.ascontiguousarray(sample)).to(device)).float()
        if self.task == "regression":
            value = out[:, 0].cpu().numpy().astype(np.float64) * self.y_scale_ + self.y_mean_
            return return_to_proba(value, self.sigma_, float(self.params["threshold"]))[0]
        probs = torch.softmax(out.double().cpu(), dim=1).numpy()[0]
        return probs / probs.sum()

    # --- persistence --------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net_.state_dict().items()}
        torch.save(state, directory / "state_dict.pt")
        meta = {
            "kind": self.kind,
            "params": self.params,
            "n_features": self.n_features_,
            "scaler": self.scaler_.to_dict(),
            "best_epoch": self.best_epoch_,
            "y_mean": getattr(self, "y_mean_", None),
            "y_scale": getattr(self, "y_scale_", None),
            "sigma": getattr(self, "sigma_", None),
        }
        (directory / "meta.json").write_text(json.dumps(meta, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> Self:
        meta = json.loads((directory / "meta.json").read_text())
        model = cls(**meta["params"])
        model.n_features_ = int(meta["n_features"])
        model.scaler_ = Standardizer.from_dict(meta["scaler"])
        model.best_epoch_ = int(meta["best_epoch"])
        for name in ("y_mean", "y_scale", "sigma"):
            if meta.get(name) is not None:
                setattr(model, f"{name}_", float(meta[name]))
        model.net_ = model.build(model.n_features_, model.n_out)
        state = torch.load(directory / "state_dict.pt", map_location=device, weights_only=True)
        model.net_.load_state_dict(state)
        model.net_.to(device).eval()
        return model
