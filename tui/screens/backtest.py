"""BacktestScreen: a rule, a model or a strategy spec over a range of stored candles.

A one-line form (market, unit, what, from, to, fee) runs the `backtest` operation in a
worker (`ctrl+r` or Enter in the form); the answer is drawn as the equity curve of the
strategy against buy-and-hold (`EquityPlot`, from the operation's downsampled `equity`), the
metrics table (after fees, the strategy beside its baselines) and the strategy's trade list.

"What" is read as a strategy spec file when it names a .json or .toml file, as a rule when
it is one (sma-cross), else as a model reference (id, name@version, name@champion): a
model's backtest starts at its test part unless "from" says otherwise, and uses the model's
own market and unit when the form leaves them as they are. Times in the form are in the
zone the screen shows (KST, or UTC after `u`). The Models screen's backtest action opens
this screen with its model filled in (`preset`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Static

from tui import messages
from tui.fmt import (
    KST,
    error_text,
    fmt_count,
    fmt_pct,
    fmt_price,
    fmt_ratio,
    fmt_share,
    fmt_time,
    zone,
)
from tui.screens.base import StationScreen
from tui.widgets.equity_plot import EquityPlot

if TYPE_CHECKING:
    from engine.service.evaluation import BacktestRequest, BacktestResult

NARROW = 120  # below this many columns: fewer columns in the tables, two results shown
DEFAULT_WHAT = "sma-cross"
DEFAULT_FEE = "0.0005"
MAX_TRADES = 2000  # trade rows shown, newest kept


# (metric key, label, format, shown when narrow)
METRICS: list[tuple[str, str, Callable[[Any], str], bool]] = [
    ("total_return", "return", fmt_pct, True),
    ("sharpe", "Sharpe", fmt_ratio, True),
    ("max_drawdown", "max drawdown", fmt_share, True),
    ("win_rate", "win rate", fmt_share, True),
    ("trades", "trades", fmt_count, True),
    ("cagr", "CAGR", fmt_pct, False),
    ("sortino", "Sortino", fmt_ratio, False),
    ("profit_factor", "profit factor", fmt_ratio, False),
    ("avg_trade_return", "avg trade", fmt_pct, False),
    ("exposure", "exposure", fmt_share, False),
]


class FormError(ValueError):
    """A form field that cannot be read; `hint` says what it takes."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Subject:
    """What the form asks to backtest: kind ("rule", "model" or "spec") and its value."""

    kind: str
    value: str
    spec: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.value}"


def read_subject(text: str) -> Subject:
    """The form's "what": a spec file (.json/.toml), a rule, else a model reference."""
    from engine.trading.backtest import STRATEGIES

    value = text.strip() or DEFAULT_WHAT
    if value.lower().endswith((".json", ".toml")):
        from engine.trading.spec import SpecError, StrategySpec

        try:
            spec = StrategySpec.load(value).to_dict()
        except SpecError as exc:
            raise FormError(str(exc), "give a strategy spec file (.json or .toml)") from None
        return Subject("spec", value, spec)
    if value in STRATEGIES:
        return Subject("rule", value)
    return Subject("model", value)


def read_time(text: str, *, utc: bool, name: str) -> datetime | None:
    """A form time (in KST, or UTC when `utc`) as a UTC datetime; None when empty."""
    import pandas as pd

    text = text.strip()
    if not text:
        return None
    try:
        value = pd.Timestamp(text)
    except ValueError:
        value = None
    if value is None or value is pd.NaT:
        raise FormError(
            f"{name} {text!r} is not a time", "write 2025-09-01 or 2025-09-01 09:00"
        ) from None
    if value.tzinfo is None:
        value = value.tz_localize("UTC" if utc else KST)
    return value.tz_convert("UTC").to_pydatetime()


def read_fee(text: str) -> float:
    """A fee per side: a fraction (0.0005) or a percentage (0.05%)."""
    text = text.strip() or DEFAULT_FEE
    try:
        fee = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        fee = -1.0
    if not 0.0 <= fee < 0.1:
        raise FormError(f"fee {text!r} is not a fee per side", "write 0.0005 or 0.05%")
    return fee


class BacktestScreen(StationScreen):
    """Form, equity plot, metrics and trades of one backtest (see the module docstring)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "Run backtest"),
        Binding("ctrl+t", "focus_trades", "Trades"),
        Binding("ctrl+f", "focus_form", "Form"),
    ]
    # the trades, not the form: a number key typed into a field would not switch screens
    AUTO_FOCUS = "#bt-trades"

    DEFAULT_CSS = """
    BacktestScreen {
        layout: vertical;
    }
    BacktestScreen #bt-form {
        height: auto;
        padding: 0 1;
    }
    BacktestScreen .bt-row {
        height: 1;
    }
    BacktestScreen .bt-row Label {
        padding: 0 1 0 0;
        color: $text-muted;
    }
    BacktestScreen .bt-row Input {
        border: none;
        height: 1;
        padding: 0;
        margin: 0 1 0 0;
        background: $boost;
    }
    BacktestScreen .bt-row Input:focus {
        background: $primary-muted;
    }
    BacktestScreen #bt-market { width: 10; }
    BacktestScreen #bt-unit { width: 4; }
    BacktestScreen #bt-what { width: 1fr; }
    BacktestScreen #bt-from, BacktestScreen #bt-to { width: 17; }
    BacktestScreen #bt-fee { width: 8; }
    BacktestScreen #bt-run {
        height: 1;
        min-width: 7;
        border: none;
        margin: 0;
    }
    BacktestScreen #bt-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    BacktestScreen #bt-status.-error {
        color: $text-error;
    }
    BacktestScreen #bt-results {
        height: 1fr;
    }
    BacktestScreen EquityPlot {
        height: 1fr;
        border: round $primary-muted;
        border-title-color: $text-primary;
    }
    BacktestScreen #bt-tables {
        height: 2fr;
        max-height: 20;
    }
    BacktestScreen #bt-metrics {
        width: 1fr;
        height: 100%;
        border: round $primary-muted;
        border-title-color: $text-primary;
    }
    BacktestScreen #bt-trades {
        width: 1fr;
        height: 100%;
        border: round $primary-muted;
        border-title-color: $text-primary;
    }
    BacktestScreen.-narrow #bt-tables {
        height: 9;
    }
    BacktestScreen.-narrow #bt-metrics {
        width: 40;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.result: BacktestResult | None = None  # the newest answer, drawn
        self.request: BacktestRequest | None = None  # what it answered
        self._preset: dict[str, str] | None = None
        self._narrow: bool | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="bt-form"):
            with Horizontal(classes="bt-row"):
                yield Label("market")
                yield Input(self.station.market, id="bt-market")
                yield Label("unit")
                yield Input(self.station.unit, id="bt-unit")
                yield Label("what")
                yield Input(DEFAULT_WHAT, placeholder="rule, model ref or spec.toml", id="bt-what")
            with Horizontal(classes="bt-row"):
                yield Label("from", id="bt-from-label")
                yield Input(placeholder="start", id="bt-from")
                yield Label("to", id="bt-to-label")
                yield Input(placeholder="all", id="bt-to")
                yield Label("fee")
                yield Input(DEFAULT_FEE, id="bt-fee")
                yield Button("Run", id="bt-run", compact=True)
        yield Static("", id="bt-status", markup=False)  # names and errors: not markup
        with Vertical(id="bt-results"):
            yield EquityPlot(id="bt-plot")
            with Horizontal(id="bt-tables"):
                yield DataTable(id="bt-metrics", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="bt-trades", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self._zone_labels()
        self.query_one("#bt-metrics").border_title = "metrics"
        self.query_one("#bt-trades").border_title = "trades"
        self.query_one(EquityPlot).border_title = "equity"
        if self.station.facade is None:
            self._status("the store is not available: the backtest needs `upquant tui`", True)
        else:
            self._status(
                "ctrl+f edits the form, ctrl+r (or Enter in it) runs the backtest;"
                " what: a rule, a model or a spec file"
            )
        if self._preset is not None:
            self._apply_preset()

    # --- the form ------------------------------------------------------------------------

    def preset(self, *, market: str, unit: str, what: str) -> None:
        """Fill the form (the Models screen's backtest action); the user runs it."""
        self._preset = {"bt-market": market, "bt-unit": unit, "bt-what": what}
        if self.is_mounted:
            self._apply_preset()

    def _apply_preset(self) -> None:
        assert self._preset is not None
        for ident, value in self._preset.items():
            self.query_one(f"#{ident}", Input).value = value
        self.query_one("#bt-from", Input).value = ""
        self.query_one("#bt-to", Input).value = ""
        self._preset = None
        self._status("model preset from the Models screen: ctrl+r runs its backtest")

    def _zone_labels(self) -> None:
        label = zone(self.station.utc)
        self.query_one("#bt-from-label", Label).update(f"from {label}")
        self.query_one("#bt-to-label", Label).update("to")

    def _value(self, ident: str) -> str:
        return self.query_one(f"#{ident}", Input).value

    def build_request(self) -> tuple[BacktestRequest, Subject]:
        """The backtest request the form describes (FormError when a field is bad)."""
        from engine.service.evaluation import BacktestRequest

        subject = read_subject(self._value("bt-what"))
        utc = self.station.utc
        start = read_time(self._value("bt-from"), utc=utc, name="from")
        end = read_time(self._value("bt-to"), utc=utc, name="to")
        if start is not None and end is not None and start >= end:
            raise FormError("from is not before to", "give the earlier time first")
        market = self._value("bt-market").strip().upper() or None
        unit = self._value("bt-unit").strip() or "1"
        fields: dict[str, Any] = {
            "market": market,
            "unit": unit,
            "start": start,
            "end": end,
            "fee": read_fee(self._value("bt-fee")),
            "equity": True,
        }
        if subject.kind == "rule":
            fields["strategy"] = subject.value
        elif subject.kind == "model":
            fields["model"] = subject.value
        else:
            fields["strategy_spec"] = subject.spec
        try:
            return BacktestRequest(**fields), subject
        except ValueError as exc:
            raise FormError(str(exc).splitlines()[0], "check the form's fields") from None

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_run()

    @on(Button.Pressed, "#bt-run")
    def _pressed(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        """Run the form's backtest in a worker (a running one is replaced)."""
        if self.station.facade is None:
            self.notify("the store is not available: start `upquant tui`", severity="error")
            return
        try:
            request, subject = self.build_request()
        except FormError as exc:
            self._status(error_text(exc), True)
            self.notify(error_text(exc), severity="error")
            return
        self._status(f"running the backtest of {subject.label}…")
        self.query_one("#bt-results").loading = True
        self.run_worker(self._run(request, subject), group="backtest", exclusive=True)

    async def _run(self, request: BacktestRequest, subject: Subject) -> None:
        try:
            result = await self.station.call("backtest", request)
        except Exception as exc:  # noqa: BLE001 - every failure is shown, never raised
            self.query_one("#bt-results").loading = False
            self._status(f"{subject.label}: {error_text(exc)}", True)
            self.notify(error_text(exc), severity="error")
            return
        self.query_one("#bt-results").loading = False
        self.request, self.result = request, result
        self.draw()
        for warning in result.warnings:
            self.notify(warning, severity="warning")

    def action_focus_trades(self) -> None:
        self.query_one("#bt-trades", DataTable).focus()

    def action_focus_form(self) -> None:
        self.query_one("#bt-what", Input).focus()

    # --- drawing -------------------------------------------------------------------------

    def draw(self) -> None:
        """Draw the newest answer: status, plot, metrics, trades (at the current width)."""
        result = self.result
        if result is None:
            return
        utc = self.station.utc
        names = list(result.results)
        fmt = "%m-%d %H:%M" if self._narrow else "%Y-%m-%d %H:%M"
        spec = f" · spec {result.strategy_spec}" if result.strategy_spec else ""
        model = f" · model {result.model}" if result.model and result.strategy_spec else ""
        self._status(
            f"{result.market} {result.unit}m · {names[0]}{spec}{model} ·"
            f" {fmt_time(result.first, utc=utc, fmt=fmt)} → {fmt_time(result.last, utc=utc, fmt=fmt)}"
            f" {zone(utc)} · {result.candles:,} candles · fee {result.fee:.3%}/side"
            + (f" · {result.note}" if result.note else "")
        )
        plot = self.query_one(EquityPlot)
        if result.equity is not None:
            plot.show(result.equity.ts, result.equity.values, utc=utc, title=names[0])
            shown = len(result.equity.ts)
            plot.border_subtitle = (
                f"{shown:,} of {result.equity.candles:,} candles"
                if shown < result.equity.candles
                else f"{shown:,} candles"
            )
        else:
            plot.clear()
        self._metrics_table(result)
        self._trades_table(result)

    def _metrics_table(self, result: BacktestResult) -> None:
        table = self.query_one("#bt-metrics", DataTable)
        table.clear(columns=True)
        narrow = bool(self._narrow)
        names = list(result.results)
        shown = names[:1] + [n for n in names[1:] if n == "buy-and-hold"] if narrow else names
        table.add_column("metric", key="metric")
        for name in shown:
            label = name if name == names[0] and not narrow else _short(name)
            table.add_column(Text(label), key=name)
        for key, label, fmt, in_narrow in METRICS:
            if narrow and not in_narrow:
                continue
            cells = []
            for name in shown:
                value = result.results[name].get(key)
                cells.append("n/a" if value is None else fmt(value))
            table.add_row(label, *cells, key=key)  # numbers and our labels only
        table.border_title = f"metrics after fees ({result.fee:.3%}/side)"

    def _trades_table(self, result: BacktestResult) -> None:
        table = self.query_one("#bt-trades", DataTable)
        table.clear(columns=True)
        narrow = bool(self._narrow)
        name = next(iter(result.results))
        trades = (result.trades or {}).get(name, [])
        utc = self.station.utc
        table.add_column(f"entry {zone(utc)}", key="entry")
        if not narrow:
            table.add_column("price", key="entry_price")
        table.add_column("exit", key="exit")
        if not narrow:
            table.add_columns("price", "candles")
        table.add_column("return", key="return")
        if not narrow:
            table.add_column("reason", key="reason")
        for trade in trades[-MAX_TRADES:]:
            ret = "n/a" if trade.return_ is None else fmt_pct(trade.return_)
            entry, exit_ = fmt_time(trade.entry_ts, utc=utc), fmt_time(trade.exit_ts, utc=utc)
            if narrow:
                table.add_row(entry, exit_, ret)
            else:
                table.add_row(
                    entry,
                    fmt_price(trade.entry_price),
                    exit_,
                    fmt_price(trade.exit_price),
                    f"{trade.candles:,}",
                    ret,
                    Text(trade.exit_reason),
                )
        more = f", newest {MAX_TRADES:,} shown" if len(trades) > MAX_TRADES else ""
        table.border_title = Text(f"trades of {name}: {len(trades):,}{more}")

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#bt-status", Static)
        status.update(text)
        status.set_class(error, "-error")

    # --- events --------------------------------------------------------------------------

    def on_resize(self, event: Resize) -> None:
        narrow = event.size.width < NARROW
        if narrow != self._narrow:
            self._narrow = narrow
            self.set_class(narrow, "-narrow")
            self.draw()

    @on(messages.ClockChanged)
    def _clock_changed(self, message: messages.ClockChanged) -> None:
        self._zone_labels()
        self.query_one(EquityPlot).set_utc(message.utc)
        self.draw()


def _short(name: str) -> str:
    """A result's name for a narrow column: sma-cross(10,30) -> sma-cross."""
    return "buy&hold" if name == "buy-and-hold" else name.split("(", 1)[0][:20]
