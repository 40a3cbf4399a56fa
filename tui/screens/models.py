"""ModelsScreen: the model registry, every market/unit, and what can be done to a model.

The table lists every registered model (market/unit by market/unit, newest first): the
aliases it holds (champion, challenger, shadow) or its status, test metrics (accuracy,
macro F1), live metrics of the models that hold an alias (their newest live predictions),
age (`fmt_age` against the app's clock) and drift state (performance drift events, features
whose PSI is flagged). The panel beside it shows the selected model's details, its
market/unit's retraining (schedule, the next scheduled retrain, retrain on drift) and the
market/unit's alias history, newest first.

Actions (each a binding, so the palette and `?` list them): promote (`p`), rollback (`r`)
and delete (`d`) ask first (y/n); compare (`c`) the two models marked with `space` (or the
marked one and the selected one) side by side; train (`t`: the Training screen); evaluate
(`e`: held-out metrics beside the baselines); backtest (`b`: the Backtest screen with the
model filled in); refresh (`ctrl+r`). Every query and action runs in a worker through the
Workstation facade; a refusal (e.g. deleting the champion) is a notification with its hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Static

from tui import messages
from tui.fmt import error_text, fmt_age, fmt_pct, fmt_time, zone
from tui.screens.base import StationScreen

if TYPE_CHECKING:
    from engine.service.monitoring import DriftAnswer
    from engine.service.registry import AliasHistory, ModelSummary

NARROW = 120  # below this many columns: fewer table columns, the panel under the table
HISTORY = 50  # alias moves shown per market/unit
SHORT_ALIAS = {"champion": "champ", "challenger": "chall"}  # the history's, when narrow


@dataclass
class UnitState:
    """What the screen knows of one market/unit besides its models."""

    history: AliasHistory | None = None
    drift: DriftAnswer | None = None
    schedule: str | None = None
    retrain_on_drift: bool = False
    last_scheduled: datetime | None = None


@dataclass
class Registry:
    """One load of the registry: models, live metrics of the aliased ones, per market/unit
    state."""

    models: list[ModelSummary] = field(default_factory=list)
    live: dict[int, Any] = field(default_factory=dict)  # model id -> LiveMetricsInfo
    units: dict[tuple[str, str], UnitState] = field(default_factory=dict)

    def model(self, model_id: int) -> ModelSummary | None:
        return next((m for m in self.models if m.id == model_id), None)


def load_registry(call: Any) -> Registry:
    """The registry through `call(name, request)` (the facade, synchronous: run it off the
    event loop)."""
    from engine.service.monitoring import DriftRequest, OpsSettingsRequest
    from engine.service.registry import (
        AliasHistoryRequest,
        ModelListRequest,
        ModelMetricsRequest,
    )
    from engine.service.retraining import RetrainListRequest

    out = Registry()
    listed = call("model_list", ModelListRequest.model_validate({}))
    out.models = sorted(listed.items, key=lambda m: (m.market, m.unit, -m.id))
    for market, unit in sorted({(m.market, m.unit) for m in out.models}):
        state = UnitState()
        state.history = call(
            "alias_history", AliasHistoryRequest(market=market, unit=unit, limit=HISTORY)
        )
        state.drift = call(
            "drift_events",
            DriftRequest.model_validate({"market": market, "unit": unit, "limit": 200}),
        )
        settings = call("ops_settings", OpsSettingsRequest(market=market, unit=unit)).settings
        state.schedule, state.retrain_on_drift = settings.schedule, settings.retrain_on_drift
        if settings.schedule is not None:
            retrains = call(
                "model_retrains",
                RetrainListRequest.model_validate({"market": market, "unit": unit}),
            )
            stamps = [r.at for r in retrains.items if r.by == "schedule" and r.at is not None]
            state.last_scheduled = max(stamps) if stamps else None
        out.units[(market, unit)] = state
    for model in out.models:
        if model.aliases:
            metrics = call(
                "model_metrics", ModelMetricsRequest.model_validate({"model": str(model.id)})
            )
            if metrics.live is not None:
                out.live[model.id] = metrics.live
    return out


def next_retrain(state: UnitState, now: datetime, utc: bool) -> str:
    """When the market/unit's next scheduled retrain is due: a time, "due" or "off"."""
    if state.schedule is None:
        return "off"
    from engine.ops.settings import schedule_period

    if state.last_scheduled is None:
        return "due"
    due = state.last_scheduled + schedule_period(state.schedule)
    return "due" if due <= now else fmt_time(due, utc=utc)


def drift_state(registry: Registry, model: ModelSummary) -> str:
    """A model's drift in a few characters: ok, N events, N features flagged."""
    state = registry.units.get((model.market, model.unit))
    if state is None or state.drift is None:
        return "-"
    events = sum(1 for e in state.drift.events if e.model_id == model.id)
    flagged = sum(len(f.flagged) for f in state.drift.feature_drift if f.model_id == model.id)
    parts = [f"{events} ev"] if events else []
    if flagged:
        parts.append(f"{flagged} psi")
    return " ".join(parts) or "ok"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _alias_text(model: ModelSummary) -> str:
    return ",".join(model.aliases) if model.aliases else model.status


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: `y` answers True, `n` or `Esc` False."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Static {
        width: auto;
        max-width: 70;
        height: auto;
        padding: 1 2;
        border: thick $warning;
        background: $surface;
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        # model names are the user's: never read as markup
        yield Static(
            Text.assemble(self.question, "\n\n", ("y", "bold"), " yes   ", ("n", "bold"), " no"),
            id="question",
        )

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class TableScreen(ModalScreen[None]):
    """A table over the screen (a comparison, an evaluation); `Esc` or `q` closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "close", "Close")]
    DEFAULT_CSS = """
    TableScreen {
        align: center middle;
    }
    TableScreen > Vertical {
        width: auto;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $primary;
        background: $surface;
    }
    TableScreen DataTable {
        height: auto;
        max-height: 40;
    }
    TableScreen Static {
        padding: 0 1;
        color: $text-muted;
    }
    """

    def __init__(
        self, title: str, columns: list[str], rows: list[list[str]], note: str = ""
    ) -> None:
        super().__init__()
        self.title_text, self.columns, self.rows, self.note = title, columns, rows, note

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = Text(self.title_text)
            table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns(*(Text(column) for column in self.columns))
            for row in self.rows:
                table.add_row(*(Text(cell) for cell in row))
            yield table
            yield Static(Text(self.note or "Esc closes"))

    def action_close(self) -> None:
        self.dismiss(None)


class ModelsScreen(StationScreen):
    """The registry and its actions (see the module docstring)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "promote", "Promote"),
        Binding("r", "rollback", "Rollback"),
        Binding("d", "delete", "Delete"),
        Binding("space", "mark", "Mark", key_display="space"),
        Binding("c", "compare", "Compare"),
        Binding("t", "train", "Train"),
        Binding("e", "evaluate", "Evaluate"),
        Binding("b", "backtest", "Backtest"),
        Binding("f", "filter", "Market/unit"),
        Binding("ctrl+r", "refresh", "Refresh"),
    ]

    DEFAULT_CSS = """
    ModelsScreen {
        layout: vertical;
    }
    ModelsScreen #md-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    ModelsScreen #md-body {
        height: 1fr;
    }
    ModelsScreen #md-table {
        height: 1fr;
        border: round $primary-muted;
        border-title-color: $text-primary;
    }
    ModelsScreen #md-side {
        height: 16;
        layout: horizontal;
    }
    ModelsScreen #md-details {
        width: 64;
        height: 100%;
        border: round $primary-muted;
        border-title-color: $text-primary;
        padding: 0 1;
    }
    ModelsScreen #md-history {
        width: 1fr;
        height: 100%;
        border: round $primary-muted;
        border-title-color: $text-primary;
    }
    ModelsScreen.-narrow #md-side {
        height: 9;
    }
    ModelsScreen.-narrow #md-details {
        width: 36;
        padding: 0;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry()
        self.marked: list[int] = []  # model ids marked for compare, oldest mark first
        self._narrow: bool | None = None
        self._loaded = False
        self._over = False  # a modal of this screen is shown over it
        self.only: tuple[str, str] | None = None  # the market/unit shown (None: every one)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="md-status", markup=False)
        with Vertical(id="md-body"):
            yield DataTable(id="md-table", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="md-side"):
                yield Static("", id="md-details")
                yield DataTable(id="md-history", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#md-table").border_title = "models"
        self.query_one("#md-details").border_title = "model"
        self.query_one("#md-history").border_title = "alias history"
        self.refresh_registry()

    # --- loading -------------------------------------------------------------------------

    def refresh_registry(self, then: str | None = None) -> None:
        """Load the registry in a worker; `then`: a line for the status once loaded."""
        if self.station.facade is None:
            self._status("the store is not available: the registry needs `upquant tui`")
            return
        self._status("loading the registry…")
        self.query_one("#md-table").loading = not self._loaded
        self.run_worker(self._load(then), group="models-load", exclusive=True)

    async def _load(self, then: str | None) -> None:
        import asyncio

        facade = self.station.facade

        def call(name: str, request: Any) -> Any:
            return getattr(facade, name)(request)

        try:
            registry = await asyncio.to_thread(load_registry, call)
        except Exception as exc:  # noqa: BLE001 - shown, never raised
            self.query_one("#md-table").loading = False
            self._status(f"could not load the registry: {error_text(exc)}")
            self.notify(error_text(exc), severity="error")
            return
        self.registry, self._loaded = registry, True
        self.marked = [i for i in self.marked if registry.model(i) is not None]
        self.query_one("#md-table").loading = False
        self.draw()
        count = len(registry.models)
        units = len(registry.units)
        self._status(
            then
            or f"{count} model{'s' if count != 1 else ''} of {units} market/unit{'s' if units != 1 else ''}"
            " · ctrl+p lists every action"
        )

    # --- drawing -------------------------------------------------------------------------

    def draw(self) -> None:
        table = self.query_one("#md-table", DataTable)
        selected = self.selected()
        table.clear(columns=True)
        narrow = bool(self._narrow)
        now, utc = self.station.now(), self.station.utc
        table.add_column(" ", key="mark")
        table.add_column("model", key="model")
        if not narrow:
            table.add_columns("kind", "market", "unit")
        table.add_column("alias", key="alias")
        table.add_column("acc", key="acc")
        if not narrow:
            table.add_columns("F1", "log loss")
        table.add_column("live", key="live")
        if not narrow:
            table.add_column("live n", key="live_n")
            table.add_column(f"created {zone(utc)}", key="created")
        table.add_column("age", key="age")
        table.add_column("drift", key="drift")
        shown = self.shown()
        for model in shown:
            test = model.metrics.get("test", {})
            live = self.registry.live.get(model.id)
            cells: list[str] = ["*" if model.id in self.marked else " ", model.ref]
            if not narrow:
                cells += [model.kind, model.market, model.unit]
            cells += [_alias_text(model), _num(test.get("accuracy"))]
            if not narrow:
                cells += [_num(test.get("f1_macro")), _num(test.get("log_loss"))]
            cells.append(_num(live.accuracy) if live is not None else "-")
            if not narrow:
                cells.append(f"{live.n_resolved}/{live.n_predictions}" if live is not None else "-")
                cells.append(fmt_time(model.created_at, utc=utc))
            cells += [fmt_age(model.created_at, now), drift_state(self.registry, model)]
            table.add_row(*(Text(cell) for cell in cells), key=str(model.id))
        where = "every market/unit" if self.only is None else f"{self.only[0]} {self.only[1]}m"
        table.border_title = f"models of {where} ({len(shown)})"
        if selected is not None and selected.id in {m.id for m in shown}:
            table.move_cursor(row=table.get_row_index(str(selected.id)), animate=False)
        self.draw_side()

    def draw_side(self) -> None:
        """The selected model's details and its market/unit's alias history."""
        details = self.query_one("#md-details", Static)
        history = self.query_one("#md-history", DataTable)
        history.clear(columns=True)
        model = self.selected()
        if model is None:
            details.update("no models registered: train one (t)")
            return
        utc, now = self.station.utc, self.station.now()
        state = self.registry.units.get((model.market, model.unit), UnitState())
        test = model.metrics.get("test", {})
        live = self.registry.live.get(model.id)
        live_text = (
            "none"
            if live is None
            else f"acc {_num(live.accuracy)} hit {fmt_pct(live.hit_rate, signed=False)}"
            f" n {live.n_resolved}/{live.n_predictions}"
        )
        trading = model.metrics.get("trading_model", {})
        retrain = state.schedule or "off"
        if state.retrain_on_drift:
            retrain += " +drift"
        lines = [
            f"{model.ref} {model.kind}",
            (
                f"{_alias_text(model)} · {fmt_age(model.created_at, now)} old · {model.market}"
                f" {model.unit}m"
            ),
            (
                f"test acc {_num(test.get('accuracy'))} F1 {_num(test.get('f1_macro'))}"
                f" ret {fmt_pct(trading.get('total_return'))}"
            ),
            f"live {live_text}",
            f"drift {drift_state(self.registry, model)}",
            f"retrain {retrain} · next {next_retrain(state, now, utc)}",
        ]
        if not self._narrow:
            lines.insert(2, f"created {fmt_time(model.created_at, utc=utc)} {zone(utc)}")
        text = Text("\n".join(lines))
        text.stylize("bold", 0, len(model.ref))
        details.update(text)
        details.border_title = f"model {model.id}"
        narrow = bool(self._narrow)
        rows = [
            [
                fmt_time(e.at, utc=utc),
                SHORT_ALIAS.get(e.alias, e.alias) if narrow else e.alias,
                e.model or "-",
                e.previous or "-",
                e.by,
            ]
            for e in (state.history.events if state.history is not None else [])
        ]
        labels = [f"at {zone(utc)}", "alias", "to", "from", "by"]
        for i, label in enumerate(labels):  # widths fixed here: the rows change often
            history.add_column(label, width=max([len(label), *(len(r[i]) for r in rows)]))
        for row in rows:
            history.add_row(*(Text(cell) for cell in row))
        history.border_title = f"alias history · {model.market} {model.unit}m"

    def selected(self) -> ModelSummary | None:
        table = self.query_one("#md-table", DataTable)
        if not self.registry.models or table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - no cursor row yet
            return None
        return None if key is None else self.registry.model(int(key))

    @on(DataTable.RowHighlighted, "#md-table")
    def _highlighted(self) -> None:
        self.draw_side()

    def _status(self, text: str) -> None:
        self.query_one("#md-status", Static).update(text)

    # --- actions -------------------------------------------------------------------------

    def _target(self) -> ModelSummary | None:
        model = self.selected()
        if model is None:
            self.notify("no model selected", severity="warning")
        return model

    def _confirm(self, question: str, name: str, request: Any, done: str) -> None:
        """Ask `question`; on yes run operation `name` with `request`, then reload."""

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(name, request, done)
            else:
                self._status("cancelled: nothing changed")

        self._push(ConfirmScreen(question), answered)

    def _push(self, modal: ModalScreen[Any], callback: Any = None) -> None:
        """Show `modal` over this screen (coming back from it does not reload)."""
        self._over = True
        self.app.push_screen(modal, callback)

    def _act(self, name: str, request: Any, done: str) -> None:
        async def run() -> None:
            try:
                await self.station.call(name, request)
            except Exception as exc:  # noqa: BLE001 - a refusal is shown with its hint
                self._status(f"refused: {error_text(exc)}")
                self.notify(error_text(exc), severity="error", timeout=8)
                return
            self.notify(done)
            self.refresh_registry(then=done)

        self._status(f"{name.replace('_', ' ')}…")
        self.run_worker(run(), group="models-act", exclusive=True)

    def action_promote(self) -> None:
        """Make the selected model the champion of its market/unit (asks first)."""
        from engine.service.registry import ModelRefRequest

        model = self._target()
        if model is None:
            return
        holder = self._champion(model.market, model.unit)
        now = f" (now {holder})" if holder else ""
        self._confirm(
            f"Promote {model.ref} to champion of {model.market} {model.unit}m{now}?",
            "model_promote",
            ModelRefRequest(model=str(model.id)),
            f"{model.ref} is the champion of {model.market} {model.unit}m",
        )

    def action_rollback(self) -> None:
        """Give the champion alias of the selected model's market/unit back (asks first)."""
        from engine.service.registry import RollbackRequest

        model = self._target()
        if model is None:
            return
        holder = self._champion(model.market, model.unit) or "nobody"
        self._confirm(
            f"Roll back the champion of {model.market} {model.unit}m ({holder}) to the"
            " previous one?",
            "model_rollback",
            RollbackRequest(market=model.market, unit=model.unit, reason="rolled back in the TUI"),
            f"rolled back the champion of {model.market} {model.unit}m",
        )

    def action_delete(self) -> None:
        """Delete the selected model, its metrics and artifact (asks first)."""
        from engine.service.registry import ModelRefRequest

        model = self._target()
        if model is None:
            return
        self._confirm(
            f"Delete {model.ref} ({_alias_text(model)}), its metrics and its artifact?",
            "model_delete",
            ModelRefRequest(model=str(model.id)),
            f"deleted {model.ref}",
        )

    def _champion(self, market: str, unit: str) -> str | None:
        state = self.registry.units.get((market, unit))
        if state is None or state.history is None:
            return None
        return next((h.model for h in state.history.holders if h.alias == "champion"), None)

    def action_mark(self) -> None:
        """Mark or unmark the selected model for compare."""
        model = self._target()
        if model is None:
            return
        if model.id in self.marked:
            self.marked.remove(model.id)
        else:
            self.marked = [*self.marked, model.id][-2:]
        table = self.query_one("#md-table", DataTable)
        table.update_cell(str(model.id), "mark", "*" if model.id in self.marked else " ")
        for other in self.shown():
            if other.id != model.id:
                table.update_cell(str(other.id), "mark", "*" if other.id in self.marked else " ")
        names = [m.ref for i in self.marked if (m := self.registry.model(i)) is not None]
        self._status(f"marked: {', '.join(names) or 'none'} · c compares")

    def action_compare(self) -> None:
        """The two marked models (or the marked one and the selected one) side by side."""
        from engine.service.registry import ModelCompareRequest

        ids = list(self.marked)
        model = self.selected()
        if len(ids) == 1 and model is not None and model.id not in ids:
            ids.append(model.id)
        if len(ids) < 2:
            self.notify("mark two models with space, then compare (c)", severity="warning")
            return
        refs = [str(i) for i in ids]

        async def run() -> None:
            try:
                answer = await self.station.call("model_compare", ModelCompareRequest(models=refs))
            except Exception as exc:  # noqa: BLE001
                self.notify(error_text(exc), severity="error")
                return
            rows = [
                [metric, *(_num(answer.values[c].get(metric), 4) for c in answer.columns)]
                for metric in answer.metrics
            ]
            self._push(TableScreen("compare (test metrics)", ["metric", *answer.columns], rows))

        self.run_worker(run(), group="models-act", exclusive=True)

    def action_train(self) -> None:
        """Start a training job (the Training screen)."""
        self.station.action_show("training")

    def action_evaluate(self) -> None:
        """Evaluate the selected model on its held-out (test) candles, beside the baselines."""
        from engine.service.evaluation import EvaluateRequest

        model = self._target()
        if model is None:
            return
        self._status(f"evaluating {model.ref} on its held-out candles…")

        async def run() -> None:
            try:
                answer = await self.station.call(
                    "evaluate", EvaluateRequest.model_validate({"model": str(model.id)})
                )
            except Exception as exc:  # noqa: BLE001
                self._status(f"evaluate {model.ref}: {error_text(exc)}")
                self.notify(error_text(exc), severity="error")
                return
            held = answer.held_out
            if held is None:
                self._status(f"evaluation of {model.ref}: run {answer.run} {answer.status}")
                return
            names = list(held.metrics)
            keys = [k for k in ("accuracy", "f1_macro", "log_loss") if k in held.metrics[names[0]]]
            rows = [[k, *(_num(held.metrics[n].get(k), 4) for n in names)] for k in keys]
            utc = self.station.utc
            note = (
                f"{held.rows:,} rows, {fmt_time(held.first, utc=utc)} →"
                f" {fmt_time(held.last, utc=utc)} {zone(utc)}"
                + (" · overlaps its training data" if held.overlaps_training else "")
            )
            self._status(f"evaluated {held.model}: {note}")
            self._push(
                TableScreen(
                    f"evaluate {held.model} (held out)",
                    ["metric", *("model" if n == "held_out" else n for n in names)],
                    rows,
                    note,
                )
            )

        self.run_worker(run(), group="models-act", exclusive=True)

    def action_backtest(self) -> None:
        """Backtest the selected model's signals (the Backtest screen, model filled in)."""
        from tui.screens.backtest import BacktestScreen

        model = self._target()
        if model is None:
            return
        self.station.action_show("backtest")
        screen = self.app.screen
        if isinstance(screen, BacktestScreen):
            screen.preset(market=model.market, unit=model.unit, what=model.ref)

    def shown(self) -> list[ModelSummary]:
        """The models the table lists: every one, or those of the chosen market/unit."""
        models = self.registry.models
        return (
            models if self.only is None else [m for m in models if (m.market, m.unit) == self.only]
        )

    def action_filter(self) -> None:
        """Show the next market/unit's models only (then every market/unit again)."""
        units: list[tuple[str, str] | None] = [None, *sorted(self.registry.units)]
        at = units.index(self.only) if self.only in units else 0
        self.only = units[(at + 1) % len(units)]
        self.draw()

    def action_refresh(self) -> None:
        """Load the registry again."""
        self.refresh_registry()

    # --- events --------------------------------------------------------------------------

    def on_resize(self, event: Resize) -> None:
        narrow = event.size.width < NARROW
        if narrow != self._narrow:
            self._narrow = narrow
            self.set_class(narrow, "-narrow")
            if self._loaded:
                self.draw()

    @on(messages.ClockChanged)
    def _clock_changed(self) -> None:
        if self._loaded:
            self.draw()

    def on_screen_resume(self) -> None:
        """Shown again from another screen: the registry may have changed (a training job,
        a retrain); back from a question or a table over it: nothing to load."""
        if self._over:
            self._over = False
        elif self._loaded:
            self.refresh_registry()
