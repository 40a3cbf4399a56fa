"""Online updates (issue 11 item 6) on real candles and real models: XGBoost continues
boosting from the parent's booster (its first rounds are the parent), a torch network is
fine-tuned from the parent's weights, the parent is untouched; `online_update` learns only
from rows strictly after the validation period whose labels resolved within the candles
before `until` (the same child as a store that never held the later candles), registers the
child with parent_id as a challenger, and refuses with the count when too few rows resolved."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from engine.live.inference import load_record
from engine.research.labels import LabelSpec, make_label_frame
from engine.training.fit import TrainingError
from engine.training.online import MIN_UPDATE_ROWS, online_update
from engine.training.train import train_model
from models.lstm import LSTMModel
from models.xgb import XGBoostModel
from store.candles import load_candles, upsert_candles
from store.db import connect
from store.registry import ModelRecord, alias_history, champion, get_model
from tests.conftest import shared_candles

FIRST = 3000  # candles the parent is trained on
MORE = 1500  # candles stored after it
NAME = "xgb"


def _rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1600, 6)).astype(np.float32)
    y = (X[:, 0] > 0.3).astype(int) + (X[:, 1] > 0).astype(int)
    noise = rng.random(len(y)) < 0.4  # noisy labels: early stopping stops early
    y[noise] = rng.integers(0, 3, int(noise.sum()))
    return X, y


def test_xgboost_update_continues_the_parents_booster() -> None:
    X, y = _rows()
    parent = XGBoostModel(n_estimators=60, early_stopping_rounds=5, learning_rate=0.5, device="cpu")
    parent.fit(X[:800], y[:800], X[800:1000], y[800:1000])
    used = parent.best_iteration_ + 1
    assert parent.booster_.num_boosted_rounds() > used  # early stopping kept extra rounds
    before = parent.predict_proba(X)
    child = parent.update(X[1000:], y[1000:], rounds=7)
    assert child.booster_.num_boosted_rounds() == used + 7 == child.best_iteration_ + 1
    assert parent.booster_.num_boosted_rounds() > used and parent.best_iteration_ + 1 == used
    np.testing.assert_array_equal(parent.predict_proba(X), before)  # untouched
    # the child's first rounds are the parent's rounds: the same margins on the same rows
    first = child.booster_.inplace_predict(X, iteration_range=(0, used), predict_type="margin")
    mine = parent.booster_.inplace_predict(X, iteration_range=(0, used), predict_type="margin")
    np.testing.assert_array_equal(first, mine)
    assert not np.allclose(child.predict_proba(X), before)  # and the new rounds learned
    # the compiled single-row walk reads all of the child's trees
    np.testing.assert_allclose(child.predict_last(X[:3]), child.predict_proba(X[:3])[-1], atol=1e-6)
    with pytest.raises(ValueError, match="rounds must be 1"):
        parent.update(X[1000:], y[1000:], rounds=0)


def test_torch_fine_tuning_starts_from_the_parents_weights() -> None:
    X, y = _rows()
    params = {"window": 5, "hidden": 8, "layers": 1, "epochs": 2, "batch_size": 64, "device": "cpu"}
    parent = LSTMModel(**params).fit(X[:600], y[:600], X[600:800], y[600:800])
    weights = {k: v.clone() for k, v in parent.net_.state_dict().items()}
    # a vanishing learning rate: the child is the parent's weights, not a new network
    still = parent.update(X[796:], y[796:], epochs=1, lr_factor=1e-12)
    for name, value in still.net_.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=1e-8)
    child = parent.update(X[796:], y[796:], epochs=2)
    assert any(not torch.equal(child.net_.state_dict()[k], weights[k]) for k in weights)
    for name, value in parent.net_.state_dict().items():  # the parent is untouched
        assert torch.equal(value, weights[name])
    again = parent.update(X[796:], y[796:], epochs=2)  # seeded: it repeats
    for name, value in again.net_.state_dict().items():
        assert torch.equal(value, child.net_.state_dict()[name])
    with pytest.raises(ValueError, match="too few for window 5"):
        parent.update(X[:3], y[:3])


@pytest.fixture(scope="module")
def parent_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XGBoost champion trained on the first FIRST KRW-BTC 1m candles (nothing after)."""
    home = tmp_path_factory.mktemp("online")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", FIRST))
        params = {"n_estimators": 30, "device": "cpu", "seed": 1}
        train_model(con, "xgboost", "KRW-BTC", "1", params=params, name=NAME)
        con.close()
    return home


def _store(parent_home: Path, where: Path, monkeypatch: pytest.MonkeyPatch, until: int | None):
    """A copy of the parent's store, with the later candles up to row `until` (all: None)."""
    shutil.copytree(parent_home, where)
    monkeypatch.setenv("UPQUANT_HOME", str(where))
    con = connect()
    later = shared_candles("KRW-BTC_1m.csv", FIRST + MORE).iloc[FIRST:until]
    upsert_candles(con, later)
    return con


def test_online_update_learns_only_resolved_rows_after_validation(
    parent_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = _store(parent_home, tmp_path / "all", monkeypatch, None)
    parent = get_model(con, f"{NAME}@1")
    assert champion(con, "KRW-BTC", "1") == parent
    candles = load_candles(con, "KRW-BTC", "1")
    cut = candles["ts"].iloc[FIRST + 1000]  # use only candles before it
    child = online_update(con, NAME, rounds=5, until=cut.to_pydatetime(), reason="fresh")
    tags = child.tags or {}
    assert (child.name, child.version, child.parent_id) == (NAME, 2, parent.id)
    assert child.params["online_update_of"] == parent.id
    update = child.params["online_update"]
    assert update["rounds"] == 5 and update["after"] == "validation"

    # strictly after the validation period: its first row is the first labelled row after it
    validation_to = pd.Timestamp((parent.tags or {})["validation_to"])
    labels = make_label_frame(
        candles[candles["ts"] < cut], LabelSpec.from_dict(parent.label_spec), unit="1"
    )
    known = labels.index[labels["label"].notna()]
    assert pd.Timestamp(tags["update_from"]) == known[known > validation_to][0]
    # up to the newest row whose label resolved before `cut`: none reads a later candle
    assert pd.Timestamp(tags["update_to"]) == known[-1]
    assert labels.loc[known[-1], "end"] < cut
    assert update["rows"] == tags["update_rows"] == len(known[known > validation_to])
    assert tags["train_to"] == tags["update_to"]  # what the A/B and expiry read
    assert "validation_to" not in tags and "run_id" not in tags and "test_from" not in tags

    # its booster continues the parent's
    mine: Any = load_record(child).model
    theirs: Any = load_record(parent).model
    used = theirs.best_iteration_ + 1
    assert mine.booster_.num_boosted_rounds() == used + 5

    # the challenger alias, by the user with the reason; the champion stays
    [event] = [e for e in alias_history(con, "KRW-BTC", "1") if e.model_id == child.id]
    assert (event.alias, event.moved_by, event.reason) == ("challenger", "user", "fresh")
    assert champion(con, "KRW-BTC", "1") == get_model(con, parent.id)
    con.close()

    # a store that never held the candles from `cut` on makes exactly the same child
    short = _store(parent_home, tmp_path / "short", monkeypatch, FIRST + 1000)
    twin = online_update(short, NAME, rounds=5)
    assert twin.tags == tags and twin.params["online_update"] == update
    X = np.random.default_rng(1).normal(size=(50, mine.n_features_)).astype(np.float32)
    np.testing.assert_array_equal(load_record(twin).model.predict_proba(X), mine.predict_proba(X))
    short.close()


def test_online_update_refuses_too_few_rows_and_updates_an_update(
    parent_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = _store(parent_home, tmp_path / "few", monkeypatch, None)
    parent = get_model(con, f"{NAME}@1")
    validation_to = pd.Timestamp((parent.tags or {})["validation_to"])
    soon = (validation_to + pd.Timedelta(minutes=60)).to_pydatetime()
    with pytest.raises(
        TrainingError, match=rf"has \d+ resolved rows .* at least {MIN_UPDATE_ROWS}"
    ):
        online_update(con, NAME, until=soon)
    with pytest.raises(TrainingError, match="epochs are for torch"):
        online_update(con, NAME, rounds=None, epochs=2)
    first = online_update(con, NAME, rounds=3)
    # an update of the update learns only from rows after the ones the first learned from
    with pytest.raises(TrainingError, match=r"has 0 resolved rows"):
        online_update(con, first.ref, rounds=3)
    con.close()


def _net(record: ModelRecord) -> torch.nn.Module:
    model = load_record(record).model
    assert isinstance(model, LSTMModel)
    return model.net_


def test_online_update_fine_tunes_a_registered_torch_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPQUANT_HOME", str(tmp_path))
    con = connect()
    candles = shared_candles("KRW-BTC_1m.csv", 2600)
    upsert_candles(con, candles.iloc[:2000])
    params = {"window": 8, "hidden": 4, "layers": 1, "epochs": 1, "device": "cpu"}
    train_model(con, "lstm", "KRW-BTC", "1", params=params, name="lstm")
    upsert_candles(con, candles.iloc[2000:])
    parent = get_model(con, "lstm@1")
    weights = {k: v.clone() for k, v in _net(parent).state_dict().items()}
    with pytest.raises(TrainingError, match="rounds are for xgboost"):
        online_update(con, "lstm", rounds=5)
    child = online_update(con, "lstm", epochs=1)
    assert (child.kind, child.parent_id, child.params["online_update"]["epochs"]) == (
        "lstm", parent.id, 1
    )  # fmt: skip
    tags = child.tags or {}
    assert pd.Timestamp(tags["update_from"]) > pd.Timestamp((parent.tags or {})["validation_to"])
    assert child.params["online_update"]["rows"] == tags["update_rows"] >= MIN_UPDATE_ROWS
    tuned = _net(child).state_dict()
    assert any(not torch.equal(tuned[k], weights[k]) for k in weights)  # it learned
    for name, value in _net(parent).state_dict().items():
        assert torch.equal(value, weights[name])  # the parent's artifact is untouched
    con.close()
