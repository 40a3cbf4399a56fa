"""The model zoo on real candles: round trips, reproducibility, windows, safe formats, ensembles
and stacking without time leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine.research.dataset import Dataset, build_dataset, split_dataset
from engine.research.features import DEFAULT_SPEC
from engine.research.labels import LabelSpec
from engine.research.splits import SplitSpec
from engine.training.ensembles import time_ordered_oof
from models import EnsembleModel, create_model, load_model
from models.torch_base import windows

TINY = {
    "xgboost": {"n_estimators": 20, "device": "cpu"},
    "lstm": {"epochs": 2, "window": 8, "hidden": 8, "layers": 1, "device": "cpu"},
    "transformer": {
        "epochs": 2,
        "window": 8,
        "hidden": 8,
        "layers": 1,
        "heads": 2,
        "device": "cpu",
    },
}


@pytest.fixture(scope="module")
def data(btc_1m: pd.DataFrame) -> Dataset:
    return build_dataset(btc_1m.iloc[:3000], DEFAULT_SPEC, LabelSpec(), unit="1")


@pytest.fixture(scope="module")
def regression(btc_1m: pd.DataFrame) -> Dataset:
    return build_dataset(btc_1m.iloc[:3000], DEFAULT_SPEC, LabelSpec(scheme="regression"), unit="1")


def _parts(data: Dataset) -> tuple[np.ndarray, ...]:
    s = split_dataset(data, SplitSpec())
    return (
        data.X[s.train],
        data.y[s.train],
        data.X[s.validation],
        data.y[s.validation],
        data.X[s.test],
    )


@pytest.mark.parametrize("kind", list(TINY))
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_save_load_round_trip_predicts_the_same(
    kind: str, task: str, data: Dataset, regression: Dataset, tmp_path: Path
) -> None:
    X_tr, y_tr, X_va, y_va, X_te = _parts(data if task == "classification" else regression)
    model = create_model(kind, task=task, **TINY[kind]).fit(X_tr, y_tr, X_va, y_va)
    probs = model.predict_proba(X_te)
    assert probs.shape == (len(X_te), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    model.save(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".json", ".pt"}  # no pickles
    again = load_model(kind, tmp_path)
    np.testing.assert_array_equal(again.predict_proba(X_te), probs)
    if task == "regression":
        np.testing.assert_array_equal(again.predict(X_te), model.predict(X_te))
    # the live path reads only the newest row's window and gives the batch path's answer
    for end in (model.context + 1, 40, len(X_te)):
        np.testing.assert_allclose(
            again.predict_last(X_te[end - model.context - 1 : end]),
            probs[end - 1],
            rtol=1e-5, atol=1e-6,
        )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_compiled_tree_walk_gives_the_boosters_margins(
    task: str, data: Dataset, regression: Dataset
) -> None:
    """XGBoost's predict_last walks the trees itself: every test row, rows with missing
    values, only the rounds up to early stopping, and a refit's new trees."""
    from models.xgb import TreeTable

    X_tr, y_tr, X_va, y_va, X_te = _parts(data if task == "classification" else regression)
    params = {"n_estimators": 300, "max_depth": 6, "early_stopping_rounds": 5, "device": "cpu"}
    model = create_model("xgboost", task=task, **params).fit(X_tr, y_tr, X_va, y_va)
    assert model.best_iteration_ < 299  # early stopping: later rounds exist and must not count
    rounds = model.best_iteration_ + 1
    rows = X_te.astype(np.float32).copy()
    rows[::7, ::3] = np.nan  # XGBoost sends a missing value down each split's default branch
    booster_margins = np.asarray(
        model.booster_.inplace_predict(rows, iteration_range=(0, rounds), predict_type="margin")
    ).reshape(len(rows), -1)
    table = TreeTable(model.booster_, model._tree_count())
    walked = np.stack([table.margins(row) for row in rows])
    np.testing.assert_allclose(walked, booster_margins, rtol=1e-5, atol=1e-5)
    whole = TreeTable(model.booster_, model.booster_.num_boosted_rounds() * table.outputs)
    assert not np.allclose(np.stack([whole.margins(r) for r in rows]), booster_margins, atol=1e-5)
    probs = model.predict_proba(rows)
    last = np.stack([model.predict_last(rows[: i + 1]) for i in range(len(rows))])
    np.testing.assert_allclose(last, probs, rtol=1e-5, atol=1e-6)
    before = model.predict_last(rows)
    model.fit(X_tr, -y_tr if task == "regression" else (2 - y_tr), X_va, y_va)  # other trees
    np.testing.assert_allclose(model.predict_last(rows), model.predict_proba(rows)[-1], atol=1e-6)
    assert not np.allclose(model.predict_last(rows), before, atol=1e-3)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_cpu_training_repeats_bit_for_bit(kind: str, data: Dataset) -> None:
    X_tr, y_tr, X_va, y_va, X_te = _parts(data)
    first = create_model(kind, seed=3, **TINY[kind]).fit(X_tr, y_tr, X_va, y_va)
    second = create_model(kind, seed=3, **TINY[kind]).fit(X_tr, y_tr, X_va, y_va)
    np.testing.assert_array_equal(first.predict_proba(X_te), second.predict_proba(X_te))
    other = create_model(kind, seed=4, **TINY[kind]).fit(X_tr, y_tr, X_va, y_va)
    assert not np.array_equal(first.predict_proba(X_te), other.predict_proba(X_te))


def test_windows_are_strided_views_padded_at_the_start() -> None:
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    w = windows(X, 4, pad=False)
    assert w.shape == (7, 4, 2) and np.shares_memory(w, X)
    np.testing.assert_array_equal(w[0], X[:4])
    np.testing.assert_array_equal(w[-1], X[-4:])
    padded = windows(X, 4, pad=True)
    assert padded.shape == (10, 4, 2)
    np.testing.assert_array_equal(padded[0], np.repeat(X[:1], 4, axis=0))


def test_sequence_prediction_reads_only_its_window(data: Dataset) -> None:
    """Row t's prediction depends on rows t-window+1..t only: later rows change nothing."""
    X_tr, y_tr, X_va, y_va, X_te = _parts(data)
    model = create_model("lstm", **TINY["lstm"]).fit(X_tr, y_tr, X_va, y_va)
    base = model.predict_proba(X_te[:50])
    changed = X_te[:60].copy()
    changed[50:] += 5.0
    np.testing.assert_allclose(model.predict_proba(changed)[:50], base, atol=1e-6)
    latest = model.predict_proba(X_te[50 - model.context - 1 : 50])[-1]
    np.testing.assert_allclose(latest, base[-1], atol=1e-6)


def test_state_dict_loads_with_weights_only(data: Dataset, tmp_path: Path) -> None:
    X_tr, y_tr, X_va, y_va, _ = _parts(data)
    create_model("transformer", **TINY["transformer"]).fit(X_tr, y_tr, X_va, y_va).save(tmp_path)
    state = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_unknown_parameters_and_tasks_are_named() -> None:
    with pytest.raises(ValueError, match="unknown lstm parameters"):
        create_model("lstm", hiden=3)
    with pytest.raises(ValueError, match="unknown task"):
        create_model("xgboost", task="ranking")


@pytest.mark.parametrize("method", ["vote", "soft-vote", "weighted", "blend"])
def test_ensembles_give_distributions_and_round_trip(
    method: str, data: Dataset, tmp_path: Path
) -> None:
    X_tr, y_tr, X_va, y_va, X_te = _parts(data)
    members = [
        create_model("xgboost", **TINY["xgboost"]).fit(X_tr, y_tr, X_va, y_va),
        create_model("lstm", **TINY["lstm"]).fit(X_tr, y_tr, X_va, y_va),
    ]
    ensemble = EnsembleModel(method, members, [{"id": 1}, {"id": 2}]).fit(X_tr, y_tr, X_va, y_va)
    probs = ensemble.predict_proba(X_te)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    ensemble.save(tmp_path)
    again = EnsembleModel.load(tmp_path, load_member=lambda ref: members[ref["id"] - 1])
    np.testing.assert_allclose(again.predict_proba(X_te), probs, atol=1e-12)
    window = TINY["lstm"]["window"]
    np.testing.assert_allclose(again.predict_last(X_te[-window:]), probs[-1], atol=1e-6)
    if method == "weighted":
        assert ensemble.weights_.sum() == pytest.approx(1.0)


def test_stacking_without_oof_is_refused(data: Dataset) -> None:
    X_tr, y_tr, X_va, y_va, _ = _parts(data)
    member = create_model("xgboost", **TINY["xgboost"]).fit(X_tr, y_tr, X_va, y_va)
    with pytest.raises(ValueError, match="out-of-fold"):
        EnsembleModel("stack", [member, member]).fit(X_tr, y_tr, X_va, y_va)


def test_stacking_oof_is_made_in_time_order_without_leakage(data: Dataset) -> None:
    """Each out-of-fold block is predicted by members trained only on rows whose labels end
    before the block starts; changing labels after a block cannot change its predictions."""
    rows = split_dataset(data, SplitSpec()).train

    def factory() -> object:
        return create_model("xgboost", **TINY["xgboost"])

    oof = time_ordered_oof([factory], data, rows, folds=3)
    assert len(oof.folds) == 3 and np.all(np.diff(oof.rows) > 0)
    assert oof.rows[0] > rows[0]  # the first block is never predicted
    for fitted, predicted in oof.folds:
        assert data.label_end[fitted].max() < data.ts[predicted[0]]
        assert fitted.max() < predicted.min()

    _, first_block = oof.folds[0]
    future = first_block[-1] + 1
    y = data.y.copy()
    y[future:] = np.random.default_rng(0).integers(0, 3, len(y) - future)
    shuffled = Dataset(data.X, y, data.ts, data.columns, data.label_end)
    again = time_ordered_oof([factory], shuffled, rows, folds=3)
    n = len(first_block)
    np.testing.assert_array_equal(again.probs[:n], oof.probs[:n])
    assert not np.array_equal(again.probs[n:], oof.probs[n:])


def test_the_transformer_computes_only_the_last_position_of_its_last_layer() -> None:
    from models.transformer import _EncoderNet

    torch.manual_seed(0)
    net = _EncoderNet(5, 12, 16, 3, 4, 0.1, 3).eval()
    x = torch.randn(7, 12, 5)
    with torch.inference_mode():
        h = net.embed(x) + net.position
        full = net.head(net.norm(net.encoder(h)[:, -1]))  # every position, every layer
        np.testing.assert_allclose(net(x).numpy(), full.numpy(), rtol=1e-5, atol=1e-6)
