"""The workstation's shell on the frozen store: every screen renders, number keys and Esc,
the help, the command palette, KST/UTC, failed operations as notifications."""

from __future__ import annotations

import gc

import pytest
from textual._context import active_message_pump
from textual.command import CommandPalette
from textual.pilot import Pilot

from engine.service.registry import ModelShowRequest
from tests.tui.screens.conftest import FROZEN_NOW, settle
from tui import messages
from tui.app import UpquantApp
from tui.screens import HelpScreen
from tui.screens.registry import CHART, ENTRIES


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_every_screen_renders_on_the_frozen_store(frozen_app, size):
    app = frozen_app(start=CHART)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        assert app.now() == FROZEN_NOW
        assert len(app.session.engine.signals) > 0  # the frozen replay played
        for entry in ENTRIES:  # shown as the keys do (a screen's focused text field takes them)
            app.action_show(entry.name)
            await settle(pilot)
            assert app.current_mode == entry.name
            assert app.screen.is_mounted
            app.screen._compositor.render_update(full=True)  # drawn without an error
        assert app._exception is None


async def test_number_keys_switch_screens_and_esc_goes_back(frozen_app):
    app = frozen_app(start="markets")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.current_mode == "markets"
        await pilot.press("3")
        await pilot.press("4")
        await pilot.press("4")  # the shown screen again: nothing to go back to
        assert app.current_mode == "training"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")  # closes the help first
        assert app.current_mode == "training" and not isinstance(app.screen, HelpScreen)
        for expected in ("models", "markets", CHART, CHART):  # the start came from the chart
            await pilot.press("escape")
            assert app.current_mode == expected


async def test_help_lists_the_screens_and_the_shown_screens_keys(frozen_app):
    app = frozen_app(start=CHART)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        sections = dict(help_screen.sections)
        assert [title for title, _ in help_screen.sections] == ["Chart", "Screens", "Everywhere"]
        assert [keys for keys, _ in sections["Screens"]] == [e.key for e in ENTRIES]
        assert sections["Screens"][0] == ("1", f"Markets: {ENTRIES[0].help}")
        assert ("+ =", "Threshold up") in sections["Chart"]  # the chart's own binding
        everywhere = dict(sections["Everywhere"])
        assert everywhere["u"] == "KST/UTC" and everywhere["esc"] == "Back"
        assert everywhere["q ^q"] == "Quit" and "palette" in everywhere["^p"]
        assert not any("Cursor" in d or "Focus" in d for _, d in sections["Chart"])
        await pilot.press("question_mark")  # ? closes it too
        assert not isinstance(app.screen, HelpScreen)


async def _palette_run(pilot: Pilot, text: str) -> None:
    await pilot.press("ctrl+p")
    assert isinstance(pilot.app.screen, CommandPalette)
    await pilot.press(*text)
    await pilot.pause(0.3)  # the palette searches its providers in a worker
    await pilot.press("enter")
    await pilot.pause()


async def test_the_palette_lists_every_screen_and_the_screens_actions_and_runs_them(frozen_app):
    app = frozen_app(start=CHART)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        listed = [command.title for command in app.get_system_commands(app.screen)]
        assert [t for t in listed if t[0].isdigit()] == [f"{e.key} {e.title}" for e in ENTRIES]
        assert "Threshold up" in listed and "Toggle holds" in listed  # the chart's actions
        await _palette_run(pilot, "Threshold up")
        assert app.session.engine.threshold == pytest.approx(0.5)  # frozen session's 0.45 + 0.05
        await _palette_run(pilot, "3 Models")
        assert app.current_mode == "models"
        await pilot.press("escape")
        assert app.current_mode == CHART


async def test_u_switches_kst_and_utc_on_every_screen(frozen_app):
    received: list[tuple[object, bool]] = []

    def hook(message) -> None:
        if isinstance(message, messages.ClockChanged):
            received.append((active_message_pump.get(), message.utc))

    app = frozen_app(start=CHART)
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        await settle(pilot)
        for key in ("1", "3"):  # the markets and models screens exist from now on
            await pilot.press(key)
        await pilot.press("u")
        await settle(pilot)
        assert app.utc is True
        screens = {app.chart_screen, *(stack[0] for stack in app._screen_stacks.values())}
        names = {type(screen).__name__ for screen in screens}
        assert names == {"MainScreen", "MarketsScreen", "ModelsScreen"}
        assert [pump for pump, _ in received if pump in screens] == [p for p, _ in received]
        assert {pump for pump, utc in received if utc} == screens  # each once
        assert len(received) == len(screens)
        assert any(n.message == "times in UTC" for n in app._notifications)
        await pilot.press("2", "u")
        await settle(pilot)
        assert app.utc is False
        assert {pump for pump, utc in received if not utc} == screens


async def test_a_failed_operation_is_a_notification_not_a_crash(frozen_app):
    app = frozen_app(start=CHART)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        # a screen's worker that lets a real operation's ServiceError (NotFound) escape
        app.run_worker(app.call("model_show", ModelShowRequest(model="no-such-model")))
        await settle(pilot)
        assert app.is_running and app._exception is None
        (note,) = [n for n in app._notifications if n.severity == "error"]
        assert "no-such-model" in note.message


async def test_an_app_without_the_store_says_so_when_a_screen_asks(frozen_app):
    app = frozen_app(start=CHART)
    app.facade = None  # a session without the store (old tests, `upquant tui` never does)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.run_worker(app.call("model_list", None))
        await settle(pilot)
        assert app.is_running and app._exception is None
        (note,) = [n for n in app._notifications if n.severity == "error"]
        assert "needs the store" in note.message and "upquant tui" in note.message


async def test_a_bug_in_a_worker_still_ends_the_app_with_its_traceback(frozen_app):
    async def broken() -> None:
        raise ZeroDivisionError("a bug")

    app = frozen_app(start=CHART)
    with pytest.raises(Exception, match="a bug"):
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            app.run_worker(broken())
            await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_help_screen_snapshot(frozen_app, snap_compare, size):
    async def open_help(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    app: UpquantApp = frozen_app(start=CHART)
    assert snap_compare(app, terminal_size=size, run_before=open_help)


async def test_the_benchmarks_probe_says_ready_and_each_switch(frozen_app, tmp_path, monkeypatch):
    probe = tmp_path / "probe.txt"
    monkeypatch.setenv("UPQUANT_TUI_READY", str(probe))
    app = frozen_app(start=CHART)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await pilot.press("escape")
        await settle(pilot)
    said = [line.split(" ", 1)[1] for line in probe.read_text().splitlines()]
    assert said[0].startswith("ready chart ") and said[0].endswith(" candles")
    assert said[1:] == ["shown models", "shown chart"]


async def test_warm_builds_every_screen_in_the_background_suspended(frozen_app, monkeypatch):
    """warm=True (what `upquant tui` runs): after the start every other screen is built, one
    at a time, and left hidden (suspended); showing one then is a switch to the screen built,
    not a build. The default (tests) builds a screen when it is first shown."""
    import tui.app as app_module

    monkeypatch.setattr(app_module, "WARM_AFTER_S", 0.05)
    monkeypatch.setattr(app_module, "WARM_EVERY_S", 0.05)
    threshold = gc.get_threshold()
    app = frozen_app(start=CHART, warm=True)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            for _ in range(200):
                if app._built is not None and app._built.is_set() and gc.get_freeze_count():
                    break
                await pilot.pause(0.05)
            await settle(pilot)
            assert {entry.name for entry in ENTRIES} <= set(app._screen_stacks)
            assert app.current_mode == CHART
            markets = app._screen_stacks["markets"][0]
            assert markets.is_mounted and not markets.is_current
            # each built screen took the app's CSS as it mounted: showing it re-applies none
            assert all(
                stack[0]._css_update_count == app._css_update_count
                for stack in app._screen_stacks.values()
            )
            # and was laid out at the terminal's size, off screen
            assert markets.query_one("#board-body").size == (120, 36)
            # the start's heap settled (frozen), Python's own full collections made rare
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[2] == app_module.FULL_AFTER
            built = markets  # the same screen is shown: nothing built on the key
            await pilot.press("1")
            await settle(pilot)
            assert app.screen is built
            assert built.table.row_count == 2  # drawn from the board it asked for when built
    finally:  # the test process's collector as it was
        gc.unfreeze()
        gc.set_threshold(*threshold)
    cold = frozen_app(start=CHART)  # the default (tests): built when first shown
    async with cold.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.pause(0.3)
        assert set(cold._screen_stacks) == {CHART}
