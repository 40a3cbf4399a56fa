"""The commands that never touch a model never load torch or xgboost: `models` registers its
kinds lazily, and the engine modules a rule backtest or a store listing reads stay light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA

HEAVY = ("torch", "xgboost")

# Runs the CLI in-process, then prints which heavy modules it loaded (atexit: typer exits).
PROBE = """
import atexit, sys
atexit.register(lambda: print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules)))
sys.argv = ["upquant", *{args!r}]
from tui.cli import main
main()
"""


def _heavy_after(home: Path, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY, args=list(args))],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "UPQUANT_HOME": str(home)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = [part for part in done.stdout.splitlines() if part.startswith("HEAVY=")]
    assert line, done.stdout + done.stderr
    return [name for name in line[-1].removeprefix("HEAVY=").split(",") if name]


@pytest.mark.parametrize(
    "module",
    ["models", "engine.params", "engine.trading.strategies", "engine.trading.backtest",
     "engine.data.candles", "store", "tui.cli"],
)
def test_importing_a_light_module_loads_no_model_framework(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == ""


def test_help_status_and_a_rule_backtest_load_no_model_framework(tmp_path: Path) -> None:
    assert _heavy_after(tmp_path, "--help") == []
    assert _heavy_after(tmp_path, "data", "status") == []
    csv = tmp_path / "btc.csv"
    csv.write_text("".join((DATA / "KRW-BTC_60m.csv").read_text().splitlines(True)[:600]))
    imported = ("data", "import", str(csv), "--market", "KRW-BTC", "--unit", "60")
    assert _heavy_after(tmp_path, *imported) == []
    assert _heavy_after(tmp_path, "backtest", "KRW-BTC", "--unit", "60") == []


def test_model_kinds_load_on_first_use() -> None:
    code = (
        "import sys, models; assert 'xgboost' in models.MODEL_KINDS;"
        " assert 'xgboost' not in sys.modules;"
        " models.create_model('xgboost'); assert 'xgboost' in sys.modules;"
        " assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
