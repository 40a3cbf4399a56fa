"""Which of `train`'s model options each kind takes: the tree booster its boosting rounds,
the torch models their epochs, batch size and window; an ensemble none (its members carry
their own). Every face passes the options it was given through here, so an option a kind does
not take never reaches it."""

from __future__ import annotations

from typing import Any

# the options only some kinds take, by kind; seed and device go to every single-model kind
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "xgboost": ("n_estimators",),
    "lstm": ("epochs", "batch_size", "window"),
    "transformer": ("epochs", "batch_size", "window"),
}


def kind_params(
    kind: str,
    *,
    seed: int,
    device: str,
    epochs: int | None = None,
    batch_size: int | None = None,
    window: int | None = None,
    n_estimators: int | None = None,
) -> dict[str, Any]:
    """The parameters `train_model` gets for `kind` from the options given (None: the kind's
    default); {} for an ensemble or an unknown kind (train_model names the valid kinds)."""
    if kind not in KIND_OPTIONS:
        return {}
    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "window": window,
        "n_estimators": n_estimators,
    }
    params: dict[str, Any] = {"seed": seed, "device": device}
    for key in KIND_OPTIONS[kind]:
        if given[key] is not None:
            params[key] = given[key]
    return params
