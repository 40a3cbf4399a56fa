"""Light commands stay light: `upquant --help`, `upquant data status` and a rule backtest
never import torch or xgboost (each costs seconds of start-up; measured with
`python -X importtime`). Each command runs in a fresh interpreter, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.candles import upsert_candles
from store.db import connect
from tests.conftest import shared_candles

# runs the CLI's entry point, then reports which heavy modules were loaded when it exited
PROBE = """
import atexit, json, sys
heavy = ("torch", "xgboost")
atexit.register(lambda: sys.stderr.write(
    "\\nLOADED " + json.dumps([m for m in heavy if m in sys.modules]) + "\\n"))
sys.argv = ["upquant", *sys.argv[1:]]
from tui.cli import main
main()
"""


@pytest.fixture
def stored_home(home: Path) -> Path:
    with connect() as con:
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 500))
    return home


@pytest.mark.parametrize(
    "args",
    [["--help"], ["data", "status"], ["backtest", "KRW-BTC", "--strategy", "sma-cross"]],
    ids=["help", "data-status", "rule-backtest"],
)
def test_light_commands_do_not_import_torch_or_xgboost(stored_home: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "UPQUANT_HOME": str(stored_home)},
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stderr.rsplit("LOADED ", 1)[1])
    assert loaded == [], f"`upquant {' '.join(args)}` imported {loaded}"
