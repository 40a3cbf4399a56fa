"""The workstation's screens: number key, mode name, title and the class that draws it.

The app (tui/app.py) installs one mode per entry (`switch_mode(name)`; the number keys, the
command palette and the help screen read this table), so a screen is added here and nowhere
else. The chart is the app's default mode: the session's events are delivered to it from the
start, whichever screen is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.screen import Screen


@dataclass(frozen=True)
class ScreenEntry:
    key: str  # the number key that shows it
    name: str  # its mode name (palette, `app.show(name)`)
    title: str
    help: str  # one line for the palette and the help screen


ENTRIES: tuple[ScreenEntry, ...] = (
    ScreenEntry("1", "markets", "Markets", "every watched market: price, change, decision"),
    ScreenEntry("2", "chart", "Chart", "candles, overlays, signals and the prediction"),
    ScreenEntry("3", "models", "Models", "the registry: aliases, metrics, promote, rollback"),
    ScreenEntry("4", "training", "Training", "start, follow and cancel training jobs"),
    ScreenEntry("5", "backtest", "Backtest", "a rule, model or spec over a range: equity, trades"),
    ScreenEntry("6", "signals", "Signals", "every signal with its reason; server and feed log"),
    ScreenEntry("7", "portfolio", "Portfolio", "the paper book: cash, positions, PnL"),
)
BY_NAME = {entry.name: entry for entry in ENTRIES}
CHART = "chart"


def screen_class(name: str) -> type[Screen[None]]:
    """The class of screen `name` (imported here, so the app starts without importing every
    screen's module before it is first shown)."""
    if name == "markets":
        from tui.screens.markets import MarketsScreen

        return MarketsScreen
    if name == "models":
        from tui.screens.models import ModelsScreen

        return ModelsScreen
    if name == "training":
        from tui.screens.training import TrainingScreen

        return TrainingScreen
    if name == "backtest":
        from tui.screens.backtest import BacktestScreen

        return BacktestScreen
    if name == "signals":
        from tui.screens.signals import SignalsScreen

        return SignalsScreen
    if name == "portfolio":
        from tui.screens.portfolio import PortfolioScreen

        return PortfolioScreen
    raise KeyError(f"no screen {name!r} (the chart is the app's default screen)")
