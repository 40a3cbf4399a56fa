"""Degenerate parameters are refused, through the CLI as a user types them, with the option,
the bad value and the valid range; NaN too (typer's float ranges let it through), and a
lowercase market wherever a market filters. Nothing is trained or stored on a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from engine.training.train import train_model
from models import create_model
from models.params import ParameterError
from store.candles import upsert_candles
from store.registry import list_models, list_runs
from tests.conftest import DATA
from tests.tui.test_cli import upquant, upquant_many

# (command, option, value, the valid range its error names)
DEGENERATE = [
    (["train", "xgboost", "KRW-BTC", "--n-estimators", "0"], "--n-estimators", "0", "whole number >= 1"),
    (["train", "lstm", "KRW-BTC", "--epochs", "0"], "--epochs", "0", "whole number >= 1"),
    (["train", "lstm", "KRW-BTC", "--batch-size", "0"], "--batch-size", "0", "whole number >= 1"),
    (["train", "xgboost", "KRW-BTC", "--trials", "-1"], "--trials", "-1", ">= 0"),
    (["train", "xgboost", "KRW-BTC", "--trials", "2", "--jobs", "0"], "--jobs", "0",
     "whole number >= 1, or -1"),
    (["train", "xgboost", "KRW-BTC", "--trials", "2", "--tune-folds", "1"], "--tune-folds",
     "1", "whole number >= 2, or 0"),
    (["train", "xgboost", "KRW-BTC", "--threshold", "nan"], "--threshold", "nan", "[0, 1]"),
    (["train", "xgboost", "KRW-BTC", "--threshold", "1.5"], "--threshold", "1.5", "[0, 1]"),
    (["evaluate", "1", "--threshold", "nan"], "--threshold", "nan", "[0, 1]"),
    (["evaluate", "1", "--threshold", "-0.1"], "--threshold", "-0.1", "[0, 1]"),
    (["predict", "1", "KRW-BTC", "--threshold", "nan"], "--threshold", "nan", "[0, 1]"),
    (["predict", "1", "KRW-BTC", "--threshold", "2"], "--threshold", "2", "[0, 1]"),
    (["backtest", "KRW-BTC", "--model", "1", "--threshold", "nan"], "--threshold", "nan",
     "[0, 1]"),
    (["backtest", "KRW-BTC", "--model", "1", "--threshold", "1.01"], "--threshold", "1.01",
     "[0, 1]"),
    (["run", "--offline", "--threshold", "nan"], "--threshold", "nan", "[0.34, 0.95]"),
    (["run", "--offline", "--threshold", "1.2"], "--threshold", "1.2", "[0.34, 0.95]"),
    (["tui", "--offline", "--threshold", "nan"], "--threshold", "nan", "[0.34, 0.95]"),
    (["run", "--offline", "--replay-candles", "-5"], "--replay-candles", "-5", ">= 0"),
    (["tui", "--offline", "--replay-candles", "-1"], "--replay-candles", "-1", ">= 0"),
    (["run", "--offline", "--replay-delay", "-1"], "--replay-delay", "-1", ">= 0"),
    (["run", "--offline", "--replay-delay", "nan"], "--replay-delay", "nan", "number >= 0"),
]


def test_a_degenerate_parameter_is_refused_with_its_valid_range(tmp_path: Path) -> None:
    """Each command refuses the value with one error line naming the option, the value and
    its valid range (all in one process: `upquant_many`)."""
    results = upquant_many(tmp_path, [args for args, *_ in DEGENERATE])
    for (args, option, value, valid), result in zip(DEGENERATE, results, strict=True):
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, args
        first = result.stderr.splitlines()[0]  # nothing (a search space, say) comes before it
        assert option in first and value in first and valid in first, (args, first)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["models", "list", "--market", "krw-btc"],
        ["models", "rollback", "krw-btc"],
        ["predict", "1", "krw-btc"],
    ],
)
def test_a_lowercase_market_filter_is_refused_with_the_code_to_use(
    tmp_path: Path, args: list[str]
) -> None:
    result = upquant(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "'krw-btc'" in result.stderr
    assert "KRW-BTC" in result.stderr


@pytest.mark.slow
def test_zero_boosting_rounds_register_no_champion(tmp_path: Path) -> None:
    """Through the CLI with candles stored (it used to register an untrained champion), and
    through the engine, where the API will call it: no run row, no model."""
    csv = tmp_path / "btc.csv"
    pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=2000).to_csv(csv, index=False)
    home = tmp_path / "home"
    imported = upquant(home, "data", "import", str(csv), "--market", "KRW-BTC", "--unit", "1")
    assert imported.returncode == 0, imported.stderr
    refused = upquant(home, "train", "xgboost", "KRW-BTC", "--n-estimators", "0")
    assert refused.returncode == 1 and "--n-estimators" in refused.stderr
    assert json.loads(upquant(home, "models", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("xgboost", {"params": {"n_estimators": 0}}, "--n-estimators 0 is out of range"),
        ("lstm", {"params": {"epochs": 0}}, "--epochs 0 is out of range"),
        ("lstm", {"params": {"batch_size": 0}}, "--batch-size 0 is out of range"),
        ("xgboost", {"trials": -1}, "--trials -1 is out of range"),
        ("xgboost", {"n_jobs": 0}, "--jobs 0 is out of range"),
        ("xgboost", {"threshold": float("nan")}, "confidence threshold nan is out of range"),
    ],
)
def test_the_engine_refuses_them_before_a_run_exists(
    con, btc_1m: pd.DataFrame, kind: str, kwargs: dict, message: str
) -> None:
    upsert_candles(con, btc_1m.iloc[:2000])
    with pytest.raises(ParameterError, match=message):
        train_model(con, kind, "KRW-BTC", "1", **kwargs)
    assert list_runs(con) == [] and list_models(con) == []


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("xgboost", {"n_estimators": 0}, "xgboost n_estimators 0 is out of range: use a whole"),
        ("xgboost", {"learning_rate": float("nan")}, "xgboost learning_rate nan is out of range"),
        ("lstm", {"epochs": 0}, "lstm epochs 0 is out of range: use a whole number >= 1"),
        ("transformer", {"dropout": 1.0}, r"transformer dropout 1.0 is out of range: .* \[0, 1\)"),
    ],
)
def test_a_model_kind_refuses_them_whoever_builds_it(kind: str, params: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        create_model(kind, **params)
