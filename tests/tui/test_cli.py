"""The `upquant` console script, run as a user runs it: exit codes, one-line errors, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DATA

UPQUANT = str(Path(sys.executable).with_name("upquant"))


def upquant(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UPQUANT, *args], check=False, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "UPQUANT_HOME": str(home), **(env or {})},
    )


# Runs many commands in ONE Python process, each through `tui.cli.main` exactly as the
# `upquant` script runs it (its exit code, stdout and stderr captured): for checks of what a
# command prints and exits with, where a process start per command (~1 s) would cost the
# suite minutes. Commands run one after another; nothing they share survives but imports.
_DRIVER = r"""
import contextlib, io, json, sys
from tui.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["upquant", *argv]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(results))
"""


def upquant_many(
    home: Path, commands: list[list[str]], env: dict[str, str] | None = None, timeout: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """`upquant(home, *args)` for each of `commands`, in one process (see _DRIVER)."""
    done = subprocess.run(
        [str(Path(UPQUANT).with_name("python")), "-c", _DRIVER],
        input=json.dumps(commands), check=True, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "UPQUANT_HOME": str(home), **(env or {})},
    )
    return [
        subprocess.CompletedProcess(["upquant", *args], code, out, err)
        for args, (code, out, err) in zip(commands, json.loads(done.stdout), strict=True)
    ]


@pytest.fixture
def csv_2000(tmp_path: Path) -> Path:
    path = tmp_path / "btc.csv"
    pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=2000).to_csv(path, index=False)
    return path


def _command_paths() -> list[list[str]]:
    """Every command and group of the CLI, walked from the typer app itself."""
    import typer.main

    from tui.cli import app

    paths: list[list[str]] = []

    def walk(command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_has_help(tmp_path: Path) -> None:
    paths = _command_paths()
    assert len(paths) > 20 and ["data", "stream"] in paths and ["models", "compare"] in paths
    for args, result in zip(paths, upquant_many(tmp_path, [[*p, "--help"] for p in paths])):
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage" in result.stdout and len(result.stdout.split("\n")) > 4, args
    alone = upquant(tmp_path, "models", "ab", "--help")  # the driver prints as the script does
    assert alone.stdout == upquant_many(tmp_path, [["models", "ab", "--help"]])[0].stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "xgboost"], "Missing argument 'market'"),
        (["tui", "--threshold", "abc"], "Invalid value for '--threshold'"),
        (["data", "status", "--bogus"], "No such option: --bogus"),
    ],
)
def test_a_malformed_command_line_is_one_error_line_and_a_hint(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = upquant(tmp_path, *args)
    assert result.returncode == 2
    first, hint = result.stderr.strip().split("\n")
    assert first.startswith("error:") and message in first
    assert hint == f"hint: see `upquant {' '.join(args[: 2 if args[0] == 'data' else 1])} --help`"


def test_import_status_and_idempotent_reimport(tmp_path: Path, csv_2000: Path) -> None:
    first = upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    assert first.returncode == 0, first.stderr
    assert "2,000 new candles stored" in first.stdout
    again = upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    assert "0 new candles stored" in again.stdout
    status = json.loads(upquant(tmp_path, "data", "status", "--json").stdout)
    assert [{k: s[k] for k in ("market", "unit", "rows", "first", "gaps")} for s in status] == [
        {"market": "KRW-BTC", "unit": "1", "rows": 2000, "first": "2025-09-01T00:00:00Z", "gaps": 0}
    ]


def test_bad_rows_are_reported_and_good_rows_imported(tmp_path: Path, csv_2000: Path) -> None:
    upquant(tmp_path, "data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1")
    frame = pd.read_csv(csv_2000)
    bad = frame.head(10).copy()
    bad.loc[0, "high"] = bad.loc[0, "low"] - 1  # high < low
    bad.loc[1, "close"] = float("nan")
    bad.loc[2, "volume"] = -1.0
    bad["timestamp"] = pd.date_range("2025-08-01", periods=10, freq="min").strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    result = upquant(tmp_path, "data", "import", str(path), "--market", "KRW-BTC", "--unit", "1")
    assert result.returncode == 0, result.stderr
    assert "7 new candles stored, 3 rejected" in result.stdout
    assert "high < low" in result.stdout and "row 2 (high < low)" in result.stdout
    status = json.loads(upquant(tmp_path, "data", "status", "--json").stdout)
    assert status[0]["rows"] == 2007  # nothing stored was lost


BAD_ARGUMENTS = [
    (["data", "import", "missing.csv", "--market", "KRW-BTC"], "no such file"),
    (["data", "import", "x.csv", "--market", "BTC"], "not an Upbit market code"),
    (["data", "import", "x.csv", "--market", "KRW-BTC", "--unit", "7"], "unit '7' is not supported"),
    (["data", "fetch", "KRW-BTC", "--since", "yesterday"], "is not a date/time"),
    (["train", "xgboost", "KRW-ETH"], "no KRW-ETH unit 1 candles"),
    (["train", "xgboost", "KRW-BTC", "--unit", "60"], "no KRW-BTC unit 60 candles"),
]


def test_bad_arguments_give_one_red_line_and_exit_1(tmp_path: Path) -> None:
    results = upquant_many(tmp_path, [args for args, _ in BAD_ARGUMENTS])
    for (args, message), result in zip(BAD_ARGUMENTS, results, strict=True):
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, args


def test_train_prints_metrics_beside_the_baseline_and_lists_the_model(tmp_path: Path, csv_2000: Path) -> None:
    imported, result, listed, table, unknown = upquant_many(tmp_path, [
        ["data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1"],
        ["train", "xgboost", "KRW-BTC", "--unit", "1", "--n-estimators", "30", "--json"],
        ["models", "list", "--json"],
        ["train", "xgboost", "KRW-BTC", "--n-estimators", "10", "--no-promote"],
        ["train", "svm", "KRW-BTC", "--unit", "1"],
    ])
    assert imported.returncode == 0, imported.stderr
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "xgboost-KRW-BTC-1@1" and report["status"] == "champion"
    assert set(report["metrics"]) == {
        "validation", "test", "baseline_majority_test", "trading_model", "trading_buy_and_hold",
        "trading_sma_cross", "trading_majority_class", "trading_no_trade",
    }
    assert [m["ref"] for m in json.loads(listed.stdout)] == ["xgboost-KRW-BTC-1@1"]
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("xgboost-KRW-BTC-1@2 (id 2, candidate")
    header = next(line for line in lines if "test part" in line and "accuracy" in line)
    assert "macro F1" in header
    model_row = next(line for line in lines if line.startswith("│ xgboost-KRW-BTC-1@2 "))
    baseline = next(line for line in lines if "majority-class baseline" in line)
    for row in (model_row, baseline):  # accuracy, macro F1 and log-loss figures in each row
        assert len([c for c in row.split("│") if c.strip().replace(".", "").isdigit()]) == 3
    assert unknown.returncode == 1 and "unknown model kind 'svm'" in unknown.stderr


def test_headless_run_replays_offline_and_stores_signals(tmp_path: Path, csv_2000: Path) -> None:
    imported, result = upquant_many(tmp_path, [
        ["data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1"],
        ["run", "--market", "KRW-BTC", "--offline"],
    ])
    assert imported.returncode == 0, imported.stderr
    assert result.returncode == 0, result.stderr
    assert "REPLAY" in result.stderr and "no champion" in result.stderr
    assert "signals:" in result.stdout


def test_registry_evaluation_and_batch_commands(tmp_path: Path, csv_2000: Path) -> None:
    """models show/promote/compare/rollback/delete, evaluate, predict and backtest --model
    (each part's commands in one process: `upquant_many`)."""
    out = tmp_path / "predictions.parquet"
    window = ["--from", "2025-09-01 12:00", "--to", "2025-09-01 18:00"]
    (
        imported, *trained, shown, promoted, listed, champion, compared, evaluated, predicted,
        backtested,
    ) = upquant_many(tmp_path, [
        ["data", "import", str(csv_2000), "--market", "KRW-BTC", "--unit", "1"],
        *(["train", "xgboost", "KRW-BTC", "--n-estimators", "15", "--seed", seed, "--json"]
          for seed in ("1", "2")),
        ["models", "show", "xgboost-KRW-BTC-1@2", "--json"],
        ["models", "promote", "xgboost-KRW-BTC-1@2"],
        ["models", "list", "--json"],
        ["models", "show", "xgboost-KRW-BTC-1@champion", "--json"],
        ["models", "compare", "1", "2", "--json"],
        ["evaluate", "xgboost-KRW-BTC-1@2", "--json"],
        ["predict", "xgboost-KRW-BTC-1@2", "KRW-BTC", *window, "--out", str(out)],
        ["backtest", "--model", "xgboost-KRW-BTC-1@2", "KRW-BTC", *window, "--json"],
    ])  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    for each in trained:
        assert each.returncode == 0, each.stderr
    shown = json.loads(shown.stdout)
    assert shown["ref"] == "xgboost-KRW-BTC-1@2" and shown["status"] == "candidate"
    assert promoted.returncode == 0, promoted.stderr
    statuses = {m["ref"]: m["status"] for m in json.loads(listed.stdout)}
    assert statuses == {"xgboost-KRW-BTC-1@1": "retired", "xgboost-KRW-BTC-1@2": "champion"}
    assert json.loads(champion.stdout)["ref"] == "xgboost-KRW-BTC-1@2"
    compared = json.loads(compared.stdout)
    assert len(compared) == 2 and all("accuracy" in str(c) for c in compared.values())

    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["rows"] > 0 and "accuracy" in report["metrics"]["held_out"]
    assert set(report["trading"]) == {"model", "sma_cross", "buy_and_hold", "no_trade", "majority_class"}
    assert report["reliability"] and report["importance"]

    assert predicted.returncode == 0, predicted.stderr
    frame = pd.read_parquet(out)
    assert len(frame) == 360 and {"p_sell", "p_hold", "p_buy", "action"} <= set(frame.columns)
    assert frame["ts"].min() == pd.Timestamp("2025-09-01 12:00", tz="UTC")
    assert frame["ts"].max() == pd.Timestamp("2025-09-01 17:59", tz="UTC")
    assert frame["label"].notna().all()  # the stored candles after --to resolve the last labels
    assert backtested.returncode == 0, backtested.stderr
    assert "xgboost-KRW-BTC-1@2" in backtested.stdout

    # a damaged artifact: the bare name serves the previous version and says so; the exact
    # reference is refused with the way out; nothing is changed in the registry
    Path(shown["artifact"]).write_bytes(b"damaged")
    fell_back, tested, exact, rolled, listed, refused, deleted, left = upquant_many(tmp_path, [
        ["evaluate", "xgboost-KRW-BTC-1", "--json"],
        ["backtest", "--model", "xgboost-KRW-BTC-1", "KRW-BTC", "--json"],
        ["predict", "xgboost-KRW-BTC-1@2", "KRW-BTC"],
        ["models", "rollback", "KRW-BTC"],
        ["models", "list", "--json"],
        ["models", "delete", "xgboost-KRW-BTC-1@1", "--yes"],
        ["models", "delete", "xgboost-KRW-BTC-1@2", "--yes"],
        ["models", "list", "--json"],
    ])  # fmt: skip
    assert fell_back.returncode == 0, fell_back.stderr
    assert json.loads(fell_back.stdout)["model"] == "xgboost-KRW-BTC-1@1"
    assert "warning: xgboost-KRW-BTC-1@2 refused" in fell_back.stderr
    assert "using previous version xgboost-KRW-BTC-1@1" in fell_back.stderr
    assert tested.returncode == 0, tested.stderr
    assert json.loads(tested.stdout)["strategy"] == "xgboost-KRW-BTC-1@1"
    assert "using previous version xgboost-KRW-BTC-1@1" in json.loads(tested.stdout)["note"]
    assert exact.returncode == 1 and exact.stderr.startswith("error: xgboost-KRW-BTC-1@2 refused")
    assert "the previous version xgboost-KRW-BTC-1@1 is intact: use it" in exact.stderr

    assert rolled.returncode == 0, rolled.stderr
    statuses = {m["ref"]: m["status"] for m in json.loads(listed.stdout)}
    assert statuses["xgboost-KRW-BTC-1@1"] == "champion"
    assert refused.returncode == 1 and refused.stderr.startswith("error:")  # the champion stays
    assert deleted.returncode == 0, deleted.stderr
    assert [m["ref"] for m in json.loads(left.stdout)] == ["xgboost-KRW-BTC-1@1"]
