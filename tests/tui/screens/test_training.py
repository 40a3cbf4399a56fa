"""The Training screen (4): every run listed with its progress, the selected run's recorded
losses in the plot, a job started from the form and cancelled (with confirmation) through a
real server, then resumed; the `train_runs` operation it lists them with; snapshots of the
frozen store at 80x24 and 160x48."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, ProgressBar, Select
from textual.widgets.data_table import ColumnKey

from engine.server.runner import listening, stop_workstation
from engine.service import Workstation
from engine.service.training import (
    TrainHistoryRequest,
    TrainRunsRequest,
    TrainStatusRequest,
)
from store.candles import upsert_candles
from store.registry import get_run, start_run, update_run
from store.tokens import create_token
from tests.tui.screens.conftest import FROZEN_NOW, frozen_session, settle
from tests.tui.test_host import until
from tui.app import UpquantApp
from tui.client import HttpWorkstation
from tui.screens.training import Confirm, TrainingScreen
from tui.widgets.curve_plot import CurvePlot
from tui.widgets.train_form import TrainForm

SETTINGS = {"kind": "lstm", "market": "KRW-BTC", "unit": "1"}
STOPPED_AT = datetime(2025, 10, 3, 14, 0, tzinfo=UTC)


def add_stopped_runs(ws: Workstation) -> tuple[int, int]:
    """An interrupted LSTM run and a failed XGBoost one, at fixed times (a snapshot's)."""
    con = ws.con()
    lstm = start_run(con, "lstm", "KRW-BTC", "1", {**SETTINGS})
    update_run(con, lstm, status="interrupted", progress=0.36, error="cancelled")
    xgb = start_run(con, "xgboost", "KRW-ETH", "60", {**SETTINGS, "kind": "xgboost"})
    update_run(con, xgb, status="failed", error="TrainingError: too few candles to train on")
    con.execute(
        "UPDATE training_runs SET started = ?, finished = ? + INTERVAL 4 MINUTE WHERE id IN (?, ?)",
        [STOPPED_AT, STOPPED_AT, lstm, xgb],
    )
    return lstm, xgb


def table(app: UpquantApp) -> DataTable[Any]:
    return app.screen.query_one("#jobs", DataTable)


def listed(app: UpquantApp) -> list[int]:
    return [int(str(row.value)) for row in table(app).rows]


# --- the operation ---------------------------------------------------------------------------


def test_train_runs_lists_every_run_newest_first(frozen_ws: Workstation) -> None:
    lstm, xgb = add_stopped_runs(frozen_ws)
    con = frozen_ws.con()
    running = start_run(con, "lstm", "KRW-BTC", "1", SETTINGS)  # this process: alive
    gone = start_run(con, "lstm", "KRW-BTC", "1", SETTINGS)
    con.execute("UPDATE training_runs SET pid = 999999999 WHERE id = ?", [gone])
    runs = frozen_ws.train_runs(TrainRunsRequest()).root
    assert [r.run for r in runs] == [gone, running, xgb, lstm, 2, 1]
    by_id = {r.run: r for r in runs}
    assert (by_id[1].status, by_id[1].model) == ("finished", "xgboost-KRW-BTC-1@1")
    assert by_id[2].model == "xgboost-KRW-BTC-1@2" and by_id[2].resume is None
    assert (by_id[lstm].status, by_id[lstm].resume) == ("interrupted", "checkpoint")
    assert (by_id[xgb].status, by_id[xgb].resume) == ("failed", "restart")  # no checkpoint
    assert by_id[running].status == "running" and by_id[running].resume is None
    # a run whose process is gone reads (and is stored) interrupted, resumable
    assert by_id[gone].status == "interrupted" and "is gone" in (by_id[gone].error or "")
    assert get_run(con, gone).status == "interrupted"
    active = frozen_ws.train_runs(TrainRunsRequest(active=True)).root
    assert [r.run for r in active] == [running]
    assert [r.run for r in frozen_ws.train_runs(TrainRunsRequest(limit=2)).root] == [
        gone,
        running,
    ]


# --- the screen on the frozen store ----------------------------------------------------------


async def test_the_selected_runs_recorded_losses_are_plotted(frozen_app) -> None:
    app = frozen_app(start="training")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, TrainingScreen)
        assert listed(app) == [2, 1]  # newest first
        plot = app.screen.query_one(CurvePlot)
        for run in (2, 1):
            if app.screen.selected != run:
                await pilot.press("down")
                await settle(pilot)
            assert app.screen.selected == run
            [history] = app.facade.train_history(TrainHistoryRequest(run=run)).root
            recorded = [(e.step + 1, e.metrics["val_mlogloss"]) for e in history.epochs]
            assert len(recorded) > 10  # its boosting rounds' validation log-loss
            xs, ys = plot.series["val_mlogloss"]
            assert list(zip(xs, ys, strict=True)) == recorded
            assert f"run {run}" in plot.plot_title
        detail = str(app.screen.query_one("#detail-text").render())
        assert "run 1 · xgboost KRW-BTC 1 · finished" in detail and "val_mlogloss" in detail
        assert app.screen.query_one("#run-progress", ProgressBar).progress == 100
        assert not app.screen.polling  # no job runs: nothing to follow
        jobs = table(app)
        assert jobs.get_cell("1", "started") == "10-03 18:59"  # KST
        await pilot.press("u")
        await settle(pilot)
        assert jobs.get_cell("1", "started") == "10-03 09:59"  # UTC
        assert str(jobs.columns[ColumnKey("started")].label) == "started UTC"


async def test_a_refused_start_says_why(frozen_app) -> None:
    app = frozen_app(start="training")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        form = app.screen.query_one(TrainForm)
        assert not form.display  # narrow: the jobs take the width
        await pilot.press("n")
        assert form.display and not app.screen.query_one("#jobs-pane").display
        # each kind shows its options, and the request carries only those
        form.query_one("#rounds", Input).value = "25"
        assert form.request().n_estimators == 25 and form.request().epochs is None
        form.query_one("#kind", Select).value = "ensemble"
        await pilot.pause()
        assert form.query_one("#row-members").display and not form.query_one("#row-rounds").display
        form.query_one("#members", Input).value = "xgboost-KRW-BTC-1@1, 2"
        ensemble = form.request()
        assert ensemble.members == ["xgboost-KRW-BTC-1@1", "2"] and ensemble.n_estimators is None
        form.query_one("#kind", Select).value = "xgboost"
        await pilot.pause()
        market = form.query_one("#market", Input)
        market.value = "KRW-XRP"  # no candles stored
        market.focus()
        await pilot.press("enter")
        await settle(pilot)
        said = [n.message for n in app._notifications]
        assert any("no KRW-XRP unit 1 candles" in text for text in said), said
        await pilot.press("escape")  # from the form: back to the jobs, still on the screen
        assert app.current_mode == "training" and not form.display
        assert listed(app) == [3, 2, 1]  # the refused run is recorded as failed
        assert app.screen.runs[3].status == "failed" and app.screen.selected == 3
        assert "no KRW-XRP unit 1 candles" in str(app.screen.query_one("#detail-text").render())
        await pilot.press("escape")  # then Esc leaves the screen
        assert app.current_mode == "chart"


async def test_without_a_store_the_screen_says_so(frozen_ws) -> None:
    app = UpquantApp(
        None, session_factory=frozen_session(frozen_ws), clock=lambda: FROZEN_NOW, start="training"
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        text = str(app.screen.query_one("#detail-text").render())
        assert "store is not available" in text
        assert app.screen.query_one(TrainForm).disabled


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_snapshot(snap_compare, frozen_ws, frozen_app, size) -> None:
    add_stopped_runs(frozen_ws)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("down", "down")  # a finished run's curves (the LSTM: interrupted)
        await settle(pilot)

    assert snap_compare(frozen_app(start="training"), terminal_size=size, run_before=run_before)


# --- a real job through a real server ---------------------------------------------------------


@pytest.fixture
async def served(home: Path, btc_1m: pd.DataFrame) -> AsyncIterator[tuple[Workstation, str, str]]:
    """A Workstation holding 1,500 real candles, served on 127.0.0.1 (url, write token)."""
    ws = Workstation()
    upsert_candles(ws.con(), btc_1m.iloc[:1500])
    _, token = create_token(ws.con(), "training-screen", "write")
    try:
        async with listening(ws, "127.0.0.1", 0) as info:
            yield ws, info.url, token
    finally:
        stop_workstation(ws)  # a job still running is stopped (interrupted)


async def wait(pilot: Pilot[Any], check: Callable[[], object], what: str) -> None:
    await until(pilot, lambda: bool(check()), what, tries=4800)  # a worker spawns: minutes


def rest_runs(url: str, token: str) -> list[tuple[int, str, str | None]]:
    """GET /api/v1/training-runs: (run, status, resume) of each."""
    request = urllib.request.Request(
        f"{url}/api/v1/training-runs?limit=5", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return [(r["run"], r["status"], r["resume"]) for r in json.load(answer)]


@pytest.mark.slow
async def test_a_job_started_and_cancelled_through_a_server_then_resumed(served) -> None:
    ws, url, token = served
    facade = HttpWorkstation(url, token)
    app = UpquantApp(
        None,
        session_factory=frozen_session(ws),
        facade=facade,
        clock=lambda: FROZEN_NOW,
        start="training",
    )
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TrainingScreen) and listed(app) == []
        form = screen.query_one(TrainForm)
        form.query_one("#kind", Select).value = "lstm"
        await pilot.pause()
        assert form.query_one("#row-epochs").display and not form.query_one("#row-rounds").display
        # small batches: epochs slow enough to cancel mid-run (early stopping waits 4)
        for name, value in (("epochs", "40"), ("batch", "8"), ("device", "cpu")):
            widget = form.query_one(f"#{name}")
            assert isinstance(widget, Input | Select)
            widget.value = value
        await pilot.click("#start")
        await wait(pilot, lambda: listed(app), "the job listed")
        [run] = listed(app)
        assert screen.selected == run and screen.runs[run].status in ("queued", "running")
        bar = screen.query_one("#run-progress", ProgressBar)
        await wait(pilot, lambda: (bar.progress or 0) > 0, "its progress moves")
        assert screen.runs[run].status == "running" and screen.polling
        worker = ws.jobs.get(run)
        assert worker is not None and worker.process is not None
        if sys.platform == "linux":  # its output never lands on the TUI's terminal
            assert os.readlink(f"/proc/{worker.process.pid}/fd/2") == os.devnull
        assert 0 < bar.progress <= 100 * (get_run(ws.con(), run).progress or 0) + 0.1  # rounded

        await pilot.press("c")
        assert isinstance(app.screen, Confirm) and f"Cancel run {run}" in app.screen.question
        assert ws.train_status(TrainStatusRequest(run=run)).status == "running"  # it asks
        await pilot.press("y")
        await wait(pilot, lambda: screen.runs[run].status == "interrupted", "cancelled")
        assert not screen.polling  # none runs: it stops asking
        assert await asyncio.to_thread(rest_runs, url, token) == [
            (run, "interrupted", "checkpoint")
        ]
        stopped = get_run(ws.con(), run)
        assert stopped.status == "interrupted" and stopped.error == "cancelled"
        job = ws.jobs.get(run)
        assert job is not None and job.process is not None and not job.process.is_alive()
        # the stopped run's recorded losses are what the plot draws
        await settle(pilot)
        [history] = ws.train_history(TrainHistoryRequest(run=run)).root
        plot = screen.query_one(CurvePlot)
        for name in ("train_loss", "val_loss"):
            recorded = [(e.step + 1, e.metrics[name]) for e in history.epochs]
            assert recorded and list(zip(*plot.series[name], strict=True)) == recorded
        assert "val_accuracy" not in plot.series  # another scale: in the text, not the plot

        await pilot.press("r")
        assert isinstance(app.screen, Confirm) and "last checkpoint" in app.screen.question
        await pilot.press("y")
        await wait(pilot, lambda: "resumed from" in (get_run(ws.con(), run).log or ""), "resumed")
        await wait(pilot, lambda: screen.runs[run].status in ("running", "finished"), "listed")
        assert screen.runs[run].resume is None
    await asyncio.to_thread(facade.close)  # a call in flight needs the loop: the server's
    assert os.getpid() == get_run(ws.con(), run).pid  # the server's process owns the job
