"""The workstation's screens, one per file."""

from tui.screens.help import HelpScreen, binding_rows
from tui.screens.main import MainScreen

__all__ = ["HelpScreen", "MainScreen", "binding_rows"]
