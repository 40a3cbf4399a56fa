"""Headless training on real candles: honest metrics, registry rows, artifacts, model I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.live.inference import load_champion, load_record
from engine.research.dataset import build_dataset, split_dataset
from engine.research.features import DEFAULT_SPEC, FeatureSpec
from engine.research.labels import LabelSpec
from engine.research.splits import SplitSpec
from engine.training.batch import predict_rows
from engine.training.train import TrainingError, train_model
from models import create_model
from store.artifacts import ArtifactError
from store.candles import load_candles, upsert_candles
from store.registry import champion, get_model, list_models, model_metrics

FAST = {"n_estimators": 40, "device": "cpu"}
TINY_TORCH = {"epochs": 3, "window": 8, "hidden": 8, "layers": 1, "device": "cpu"}


def test_train_registers_a_versioned_champion_with_metrics(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m)
    report = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST)
    record = report.model
    assert record.ref == "xgboost-KRW-BTC-1@1" and record.status == "champion"
    assert Path(record.artifact).name == f"{record.sha256}.tar"
    assert Path(record.artifact).stat().st_size == record.size
    assert record.feature_spec_hash and record.label_spec["horizon"] == 10
    stored = model_metrics(con, record.id)
    assert stored["test"]["accuracy"] == pytest.approx(report.metrics["test"]["accuracy"])
    assert {"validation", "test", "baseline_majority_test", "trading_model"} <= set(stored)
    assert {"trading_buy_and_hold", "trading_sma_cross"} <= set(stored)
    from store.registry import get_run, run_epochs

    rounds = run_epochs(con, report.run_id)  # boosting progress reached the store as it ran
    assert len(rounds) >= 10 and sorted(rounds) == list(range(len(rounds)))
    assert all(m["val_mlogloss"] > 0 for m in rounds.values())
    assert get_run(con, report.run_id).status == "finished"
    assert sum(report.rows.values()) < len(
        btc_1m
    )  # warm-up, purge and the unlabelled tail are gone

    second = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST)
    assert second.model.version == 2 and second.model.status == "candidate"
    assert champion(con, "KRW-BTC", "1").id == record.id
    assert [m.version for m in list_models(con)] == [1, 2]
    assert get_model(con, "xgboost-KRW-BTC-1").version == 2
    assert get_model(con, "xgboost-KRW-BTC-1@1").id == record.id


def test_loaded_model_predicts_the_same_as_the_trained_one(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m)
    report = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST)
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and reason.startswith("champion")
    X = np.random.default_rng(0).normal(0, 0.01, (5, len(report.features))).astype(np.float32)
    probs = loaded.model.predict_proba(X)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    again = load_record(report.model).model.predict_proba(X)
    np.testing.assert_array_equal(probs, again)


def test_tampered_artifact_is_refused(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m)
    record = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
    with open(record.artifact, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"tampered")
    with pytest.raises(ArtifactError):
        load_record(record)
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is None and "refused" in reason and "sha256" in reason


def test_shuffled_labels_score_at_chance(con, btc_1m: pd.DataFrame) -> None:
    """A model can't beat the majority class when labels carry no information."""
    from engine.research.dataset import build_dataset
    from engine.research.features import DEFAULT_SPEC
    from engine.research.metrics import classification_metrics, majority_baseline
    from engine.research.splits import SplitSpec, chronological_split

    data = build_dataset(btc_1m, DEFAULT_SPEC, LabelSpec())
    y = np.random.default_rng(1).permutation(data.y)
    split = chronological_split(len(y), SplitSpec(), 10)
    model = create_model("xgboost", **FAST).fit(
        data.X[split.train], y[split.train], data.X[split.validation], y[split.validation]
    )
    proba = model.predict_proba(data.X[split.test])
    scored = classification_metrics(y[split.test], proba.argmax(1), proba)
    baseline = majority_baseline(y[split.train], y[split.test])
    assert scored["accuracy"] <= baseline["accuracy"] + 0.02


def test_training_without_candles_says_what_to_do(con) -> None:
    with pytest.raises(TrainingError, match="upquant data import"):
        train_model(con, "xgboost", "KRW-ETH", "1")


def test_training_with_an_impossible_threshold_names_the_missing_classes(
    con, btc_1m: pd.DataFrame
) -> None:
    upsert_candles(con, btc_1m)
    with pytest.raises(TrainingError, match="no sell, buy labels"):
        train_model(con, "xgboost", "KRW-BTC", "1", label_spec=LabelSpec(threshold=0.5))


def test_unknown_model_kind_is_a_clear_error(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m)
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        train_model(con, "svm", "KRW-BTC", "1")


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_torch_kinds_train_and_log_epochs(con, btc_1m: pd.DataFrame, kind: str) -> None:
    from store.registry import get_run, run_epochs

    upsert_candles(con, btc_1m.iloc[:3000])
    report = train_model(con, kind, "KRW-BTC", "1", params=TINY_TORCH)
    run = get_run(con, report.run_id)
    assert run.status == "finished" and run.model_id == report.model.id and run.progress == 1.0
    epochs = run_epochs(con, report.run_id)
    assert sorted(epochs) == list(range(report.epochs)) and "val_loss" in epochs[0]
    loaded = load_record(report.model)
    assert loaded.context == 7 and loaded.history_needed == loaded.feature_spec.window() + 7


def test_regression_scheme_trains_a_regressor(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.iloc[:3000])
    report = train_model(
        con, "xgboost", "KRW-BTC", "1", params=FAST, label_spec=LabelSpec(scheme="regression")
    )
    assert {"rmse", "ic"} <= set(report.metrics["test"]) and "baseline_zero_test" in report.metrics


def test_interrupted_run_registers_nothing_and_resumes_bit_for_bit(
    con, btc_1m: pd.DataFrame
) -> None:
    from store.registry import get_run, run_epochs

    upsert_candles(con, btc_1m.iloc[:3000])
    reference = train_model(con, "lstm", "KRW-BTC", "1", params=TINY_TORCH, name="reference")

    def stop_after_two(progress) -> None:
        if progress.phase == "epoch" and progress.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(
            con, "lstm", "KRW-BTC", "1", params=TINY_TORCH, name="resumed", progress=stop_after_two
        )
    run_id = reference.run_id + 1
    run = get_run(con, run_id)
    assert run.status == "interrupted" and run.model_id is None and run.checkpoint
    assert [m.name for m in list_models(con)] == ["reference"]
    assert sorted(run_epochs(con, run_id)) == [0, 1]

    resumed = train_model(con, "lstm", "KRW-BTC", "1", resume=run_id)
    assert resumed.model.name == "resumed" and get_run(con, run_id).status == "finished"
    assert sorted(run_epochs(con, run_id)) == sorted(run_epochs(con, reference.run_id))
    X = np.random.default_rng(0).normal(0, 1, (20, len(resumed.features))).astype(np.float32)
    np.testing.assert_array_equal(
        load_record(resumed.model).model.predict_proba(X),
        load_record(reference.model).model.predict_proba(X),
    )
    with pytest.raises(TrainingError, match="only interrupted or failed"):
        train_model(con, "lstm", "KRW-BTC", "1", resume=run_id)


@pytest.mark.parametrize("method", ["stack", "blend", "weighted"])
def test_ensemble_of_registered_members(con, btc_1m: pd.DataFrame, method: str) -> None:
    upsert_candles(con, btc_1m.iloc[:3000])
    a = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
    b = train_model(con, "lstm", "KRW-BTC", "1", params=TINY_TORCH).model
    report = train_model(con, "ensemble", "KRW-BTC", "1", members=[a.ref, str(b.id)], method=method)
    assert report.model.kind == "ensemble" and report.model.params["method"] == method
    assert [m["sha256"] for m in report.model.params["members"]] == [a.sha256, b.sha256]
    loaded = load_record(report.model)
    assert loaded.context == b.params["window"] - 1
    # the stored test metrics are the loaded ensemble's own, on the purged test rows
    data = build_dataset(load_candles(con, "KRW-BTC", "1"),
                         FeatureSpec.from_dict(report.model.feature_spec),
                         LabelSpec.from_dict(report.model.label_spec))
    split = split_dataset(data, SplitSpec.from_dict(report.model.params["split"]))
    probs = predict_rows(loaded.model, data.X, split.test)
    accuracy = float((probs.argmax(axis=1) == data.y[split.test]).mean())
    assert report.metrics["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)


@pytest.mark.parametrize(
    ("member_split", "method", "message"),
    [
        (SplitSpec(train=0.8, validation=0.1), "soft-vote", "inside the ensemble's test part"),
        (SplitSpec(train=0.78, validation=0.05), "blend", "inside the validation part"),
    ],
)
def test_an_ensemble_refuses_members_that_learned_from_its_held_out_rows(
    con, btc_1m: pd.DataFrame, member_split: SplitSpec, method: str, message: str
) -> None:
    upsert_candles(con, btc_1m.iloc[:3000])
    a = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
    b = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST, split_spec=member_split,
                    name="late").model
    with pytest.raises(ValueError, match=message):
        train_model(con, "ensemble", "KRW-BTC", "1", members=[a.ref, b.ref], method=method)
    assert [m.name for m in list_models(con)] == ["xgboost-KRW-BTC-1", "late"]


def test_tuning_records_its_search(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.iloc[:3000])
    report = train_model(con, "xgboost", "KRW-BTC", "1", params={**FAST}, trials=3)
    search = report.model.params["search"]
    assert len(search["trials"]) == 3 and "max_depth" in search["space"]
    assert search["best_score"] == min(t["score"] for t in search["trials"])


def test_tuning_in_parallel_on_walk_forward_folds_and_its_timeout(con, btc_1m: pd.DataFrame) -> None:
    from engine.research.dataset import build_dataset, split_dataset
    from engine.research.features import DEFAULT_SPEC
    from engine.training.tuning import tune

    data = build_dataset(btc_1m.iloc[:3000], DEFAULT_SPEC, LabelSpec())
    split = split_dataset(data, SplitSpec())
    alone = tune("xgboost", FAST, data, split, trials=3, folds=2, n_jobs=1)
    side_by_side = tune("xgboost", FAST, data, split, trials=3, folds=2, n_jobs=2)
    # the same candidates, scored on the same folds, whatever order the workers finish in
    assert [(t.number, t.params["max_depth"]) for t in alone.trials] == [
        (t.number, t.params["max_depth"]) for t in side_by_side.trials
    ]
    np.testing.assert_allclose([t.score for t in alone.trials],
                               [t.score for t in side_by_side.trials], rtol=1e-6)
    fold_scores = [t.score for t in alone.trials]
    plain = tune("xgboost", FAST, data, split, trials=3)
    assert [t.score for t in plain.trials] != fold_scores  # validation part, not the folds
    with pytest.raises(ValueError, match="no trial finished within"):
        tune("xgboost", FAST, data, split, trials=2, timeout=1e-9)


@pytest.mark.parametrize(
    ("kind", "params", "candles"),
    [
        ("xgboost", FAST, 50),
        ("xgboost", FAST, 300),
        ("lstm", {**TINY_TORCH, "window": 200}, 700),  # enough to split, not for the window
    ],
)
def test_too_few_candles_say_how_many_are_needed_and_how_many_there_are(
    con, btc_1m: pd.DataFrame, kind: str, params: dict, candles: int
) -> None:
    upsert_candles(con, btc_1m.iloc[:candles])
    with pytest.raises(TrainingError) as caught:
        train_model(con, kind, "KRW-BTC", "1", params=params)
    message = str(caught.value)
    assert f"{candles:,} KRW-BTC unit 1 candles" in message and "upquant data fetch" in message
    needed = int(message.split("at least ")[1].split()[0].replace(",", ""))
    assert needed > candles
    # the stated minimum is exact: one candle fewer is still too few; that many split (a
    # single training row may then lack a class, which is another error)
    upsert_candles(con, btc_1m.iloc[: needed - 1])
    with pytest.raises(TrainingError, match=f"{needed - 1:,} KRW-BTC unit 1 candles are too few"):
        train_model(con, kind, "KRW-BTC", "1", params=params)
    upsert_candles(con, btc_1m.iloc[:needed])
    try:
        train_model(con, kind, "KRW-BTC", "1", params=params)
    except TrainingError as exc:
        assert "candles are too few" not in str(exc)


def test_a_dataset_without_rows_keeps_its_label_end_times_aware(btc_1m: pd.DataFrame) -> None:
    """The purger compares row and label-end times: an empty dataset must not lose their UTC
    zone (it did, through an object array, and the purger raised a TypeError)."""
    data = build_dataset(btc_1m.iloc[:50], DEFAULT_SPEC, LabelSpec(), unit="1")
    assert len(data.y) == 0
    assert str(data.label_end.tz) == "UTC" and str(data.ts.tz) == "UTC"


def test_an_interrupted_xgboost_run_restarts_from_scratch(con, btc_1m: pd.DataFrame) -> None:
    from store.registry import get_run, run_epochs

    upsert_candles(con, btc_1m.iloc[:3000])

    def stop_early(progress) -> None:
        if progress.phase == "epoch" and progress.done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(con, "xgboost", "KRW-BTC", "1", params=FAST, progress=stop_early)
    assert get_run(con, 1).status == "interrupted" and run_epochs(con, 1)
    with pytest.raises(TrainingError, match="keeps no checkpoint") as refused:
        train_model(con, "", "", "1", resume=1)
    assert "`upquant train --resume 1 --restart`" in str(refused.value)
    report = train_model(con, "", "", "1", resume=1, restart=True)
    run = get_run(con, 1)
    assert run.status == "finished" and "restarted from scratch" in (run.log or "")
    assert report.model.kind == "xgboost" and report.model.params["n_estimators"] == 40
    twice = con.execute(
        "SELECT step, name FROM metrics WHERE run_id = 1 AND step IS NOT NULL"
        " GROUP BY step, name HAVING count(*) > 1"
    ).fetchall()
    assert twice == []  # the first attempt's rounds are gone
