"""`upquant models metrics MODEL [--last N] [--json]` as a user runs it, on a real XGBoost
model's store: --json with the live metrics; the live table, the calibration bins, latency
and fallbacks once outcomes resolved; a clear line (and the stored metrics) without live
rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.ops.outcomes import resolve_outcomes
from store.db import connect
from tests.engine.service.test_outcome_ops import LIVE_ROWS, NAME, live_store
from tests.tui.test_cli import upquant

pytestmark = pytest.mark.slow  # three CLI processes


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("live")
    live_store(home)
    return home


def test_models_metrics(stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    shutil.copytree(stored, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    con = connect()
    assert resolve_outcomes(con).resolved == LIVE_ROWS - 10
    con.close()
    shown = upquant(home, "models", "metrics", NAME, "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["test"] and body["live"]["n_predictions"] == LIVE_ROWS
    assert body["live"]["n_resolved"] == LIVE_ROWS - 10 and body["live"]["accuracy"] is not None

    shown = upquant(home, "models", "metrics", NAME, "--last", "30")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "live (newest 30 rows)" in out and "30 (20 resolved, 10 pending" in out
    assert "calibration" in out and "0.9–1.0" in out and "p99" in out and "fallbacks" in out

    con = connect()
    con.execute("DELETE FROM predictions WHERE source = 'live'")
    con.close()
    shown = upquant(home, "models", "metrics", NAME)
    assert shown.returncode == 0 and f"no live predictions of {NAME}@1 yet" in shown.stdout
    assert "accuracy" in shown.stdout  # the stored metrics still shown
