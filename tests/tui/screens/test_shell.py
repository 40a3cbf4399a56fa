"""The workstation's shell on the frozen store: every screen renders, keys switch screens."""

from __future__ import annotations

import pytest

from tests.tui.screens.conftest import FROZEN_NOW, settle
from tui.screens.registry import CHART, ENTRIES


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_every_screen_renders_on_the_frozen_store(frozen_app, size):
    app = frozen_app(start=CHART)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        assert app.now() == FROZEN_NOW
        assert len(app.session.engine.signals) > 0  # the frozen replay played
        for entry in ENTRIES:
            await pilot.press(entry.key)
            await settle(pilot)
            assert app.current_mode == entry.name
            assert app.screen.is_mounted
            app.screen._compositor.render_update(full=True)  # drawn without an error
        assert app.return_value is None and not app._exception
