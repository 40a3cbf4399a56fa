"""The Models screen on the frozen store (champion xgboost-KRW-BTC-1@1, challenger @2)
through the real Workstation: promote behind a confirmation (n changes nothing, y moves the
champion and the alias history shows it), rollback, delete of the champion refused with the
service's hint, compare, backtest preselected; snapshots at 80x24 and 160x48."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from engine.service.registry import AliasHistoryRequest, ModelListRequest
from tests.tui.screens.conftest import MARKET, UNIT, served, settle
from tui.screens.backtest import BacktestScreen
from tui.screens.models import (
    ConfirmScreen,
    ModelsScreen,
    TableScreen,
    UnitState,
    next_retrain,
)
from tui.widgets.equity_plot import EquityPlot

CHAMPION, CHALLENGER = "xgboost-KRW-BTC-1@1", "xgboost-KRW-BTC-1@2"


def _champion(ws) -> str:
    holders = ws.alias_history(AliasHistoryRequest(market=MARKET, unit=UNIT)).holders
    return next(h.model for h in holders if h.alias == "champion")


async def _select(pilot: Pilot, ref: str) -> ModelsScreen:
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ModelsScreen)
    table = screen.query_one("#md-table", DataTable)
    model = next(m for m in screen.registry.models if m.ref == ref)
    table.move_cursor(row=table.get_row_index(str(model.id)))
    await pilot.pause()
    assert screen.selected() == model
    return screen


def _history(screen: ModelsScreen) -> list[list[str]]:
    table = screen.query_one("#md-history", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def _notes(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_promote_asks_first_then_moves_the_champion_and_rollback_moves_it_back(
    frozen_app, frozen_ws
):
    app = frozen_app(start="models")
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _select(pilot, CHALLENGER)
        moves = len(_history(screen))
        await pilot.press("p")
        assert isinstance(app.screen, ConfirmScreen) and CHAMPION in app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert app.screen is screen and _champion(frozen_ws) == CHAMPION
        assert "cancelled" in str(screen.query_one("#md-status", Static).render())

        await pilot.press("p", "y")
        await settle(pilot)
        assert _champion(frozen_ws) == CHALLENGER
        history = _history(screen)
        assert len(history) > moves and history[0][1:4] == ["champion", CHALLENGER, CHAMPION]
        assert history[0][4] == "user"
        rows = {m.ref: m for m in screen.registry.models}
        assert rows[CHALLENGER].aliases == ["champion"]

        await pilot.press("r", "y")
        await settle(pilot)
        assert _champion(frozen_ws) == CHAMPION
        assert _history(screen)[0][1:4] == ["champion", CHAMPION, CHALLENGER]


async def test_deleting_the_champion_is_refused_with_its_hint(frozen_app, frozen_ws):
    app = frozen_app(start="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await _select(pilot, CHAMPION)
        await pilot.press("d", "y")
        await settle(pilot)
        assert any(
            CHAMPION in note and "promote another model or roll back first" in note
            for note in _notes(app)
        )
        listed = frozen_ws.model_list(ModelListRequest(market=MARKET)).items
        assert {m.ref for m in listed} == {CHAMPION, CHALLENGER}
        screen, table = app.screen, app.screen.query_one("#md-table", DataTable)
        await pilot.press("f")  # one market/unit's models, then every one's again
        assert screen.only == (MARKET, UNIT) and "KRW-BTC 1m (2)" in str(table.border_title)
        await pilot.press("f")
        assert screen.only is None and table.row_count == 2


async def test_compare_two_marked_models_and_backtest_preselects_the_model(frozen_app):
    app = frozen_app(start="models")
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _select(pilot, CHAMPION)
        await pilot.press("space")
        await _select(pilot, CHALLENGER)
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, TableScreen)
        columns = app.screen.columns
        assert [c.split()[0] for c in columns[1:3]] == [CHAMPION, CHALLENGER], columns
        assert app.screen.rows and all(len(row) == len(columns) for row in app.screen.rows)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("e")  # held-out metrics of the selected one, beside baselines
        await settle(pilot)
        assert isinstance(app.screen, TableScreen) and CHALLENGER in app.screen.title_text
        assert app.screen.columns[:2] == ["metric", "model"]
        assert [row[0] for row in app.screen.rows][:2] == ["accuracy", "f1_macro"]
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("b")
        await settle(pilot)
        backtest = app.screen
        assert isinstance(backtest, BacktestScreen)
        assert backtest.query_one("#bt-what", Input).value == CHALLENGER
        assert backtest.query_one("#bt-market", Input).value == MARKET


def test_models_screen_snapshot_80x24(frozen_app, snap_compare):
    assert snap_compare(frozen_app(start="models"), terminal_size=(80, 24), run_before=settle)


def test_models_screen_snapshot_160x48(frozen_app, snap_compare):
    assert snap_compare(frozen_app(start="models"), terminal_size=(160, 48), run_before=settle)


def test_next_retrain_and_drift_read_the_schedule_and_the_events():
    now = datetime(2025, 10, 4, 1, 20, tzinfo=UTC)
    assert next_retrain(UnitState(), now, utc=True) == "off"
    assert next_retrain(UnitState(schedule="6h"), now, utc=True) == "due"
    state = UnitState(schedule="6h", last_scheduled=now - timedelta(hours=2))
    assert next_retrain(state, now, utc=True) == "10-04 05:20"
    assert next_retrain(state, now, utc=False) == "10-04 14:20"  # KST
    state.last_scheduled = now - timedelta(hours=7)
    assert next_retrain(state, now, utc=True) == "due"


async def test_attached_to_a_real_server_it_promotes_and_backtests_over_http(frozen_ws, frozen_app):
    """The same screens with the facade an attached TUI has (HttpWorkstation): the registry,
    a promotion (a write-scope token) and a backtest whose equity crossed the wire."""
    async with served(frozen_ws, "write", "models-screen") as facade:
        app = frozen_app(start="models", facade=facade)
        async with app.run_test(size=(80, 24)) as pilot:
            await _select(pilot, CHALLENGER)
            await pilot.press("p", "y")
            await settle(pilot)
            assert _champion(frozen_ws) == CHALLENGER
            assert _history(app.screen)[0][1:3] == ["champ", CHALLENGER]  # narrow
            await pilot.press("b", "ctrl+r")
            await settle(pilot)
            backtest = app.screen
            assert isinstance(backtest, BacktestScreen) and backtest.result is not None
            answer = frozen_ws.backtest(backtest.request)
            assert backtest.result == answer and backtest.request.model == CHALLENGER
            assert backtest.query_one(EquityPlot).ts == answer.equity.ts
