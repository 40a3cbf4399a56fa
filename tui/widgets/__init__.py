"""The workstation's widgets, one per file."""

from tui.widgets.candle_chart import CandleChart
from tui.widgets.prediction_panel import PredictionPanel
from tui.widgets.session_banner import SessionBanner
from tui.widgets.signal_log import SignalLog
from tui.widgets.status_line import StatusLine

__all__ = ["CandleChart", "PredictionPanel", "SessionBanner", "SignalLog", "StatusLine"]
