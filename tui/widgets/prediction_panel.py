"""PredictionPanel: the model in use, the class probabilities of the latest closed candle,
the last action and the confidence threshold (the shown market's lane's); the candle's time
in KST, or UTC."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from engine.trading.strategies import Signal
from models import CLASSES
from tui.fmt import fmt_time, zone


class PredictionPanel(Widget):
    """Renders what the engine decided on the latest closed candle; it decides nothing itself."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "prediction-panel--label",
        "prediction-panel--muted",
        "prediction-panel--sell",
        "prediction-panel--hold",
        "prediction-panel--buy",
        "prediction-panel--track",
        "prediction-panel--threshold",
    }

    model_ref: reactive[str] = reactive("")
    """The champion's `name@version`, or `rule: <name>` when the rule strategy decides."""
    model_note: reactive[str] = reactive("")
    """Why there is no model, when there is none."""
    probs: reactive[tuple[float, float, float] | None] = reactive(None)
    """sell, hold, buy of the latest closed candle; None when the rule decided."""
    signal: reactive[Signal | None] = reactive(None)
    threshold: reactive[float] = reactive(0.5)
    utc: reactive[bool] = reactive(False)
    """The candle's time in UTC instead of KST."""

    def show_signal(self, signal: Signal, probs: np.ndarray | None) -> None:
        self.signal = signal
        # a tuple, not the array: reactive compares old and new values with `!=`
        self.probs = None if probs is None else (float(probs[0]), float(probs[1]), float(probs[2]))

    def render(self) -> RenderableType:
        label = self.get_component_rich_style("prediction-panel--label")
        muted = self.get_component_rich_style("prediction-panel--muted")
        facts = Table.grid(padding=(0, 1))
        facts.add_column(style=label, no_wrap=True, width=9)
        facts.add_column()
        facts.add_row("Model", Text(self.model_ref or "loading…"))
        if self.model_note:
            facts.add_row("", Text(self.model_note, style=muted))
        signal = self.signal
        when = (
            f"{fmt_time(signal.ts, utc=self.utc, fmt='%m-%d %H:%M')} {zone(self.utc)}"
            if signal
            else "–"
        )
        facts.add_row("Candle", Text(when))
        parts: list[RenderableType] = [facts, Text()]
        parts.append(
            self._bars()
            if self.probs is not None
            else Text(
                "no probabilities: the rule strategy decided"
                if signal
                else "waiting for the first closed candle",
                style=muted,
            )
        )
        parts.append(Text())
        decision = Table.grid(padding=(0, 1))
        decision.add_column(style=label, no_wrap=True, width=9)
        decision.add_column()
        decision.add_row(
            "Threshold", Text.assemble(f"{self.threshold:.2f}  ", ("(+/- to change)", muted))
        )
        if signal:
            action = Text(
                signal.action.upper(),
                style=label + self.get_component_rich_style(f"prediction-panel--{signal.action}"),
            )
            decision.add_row(
                "Signal", Text.assemble(action, f"  confidence {signal.confidence:.2f}")
            )
            decision.add_row("Source", Text(signal.source))  # not markup: a model name
            decision.add_row("Reason", Text(signal.reason, style=muted))
        else:
            decision.add_row("Signal", "–")
        parts.append(decision)
        return Group(*parts)

    def _bars(self) -> Table:
        assert self.probs is not None
        track = self.get_component_rich_style("prediction-panel--track")
        marker = self.get_component_rich_style("prediction-panel--threshold")
        width = max(self.content_size.width - 13, 4)
        bars = Table.grid(padding=(0, 1))
        bars.add_column(no_wrap=True)
        bars.add_column(no_wrap=True)
        bars.add_column(justify="right", no_wrap=True)
        for action, p in zip(CLASSES, self.probs, strict=True):
            style = self.get_component_rich_style(f"prediction-panel--{action}")
            filled = round(p * width)
            bar = Text.assemble(("█" * filled, style), ("░" * (width - filled), track))
            at = min(width - 1, round(self.threshold * width))
            if action != "hold" and at >= filled:  # where buy/sell would start to act
                bar = Text.assemble(bar[:at], ("│", marker), bar[at + 1 :])
            bars.add_row(Text(f"{action:<4}", style=style), bar, f"{p * 100:5.1f}%")
        return bars
