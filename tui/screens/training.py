"""TrainingScreen (screen 4): start training jobs, follow every running and past one, cancel
and resume them, and draw the selected run's loss and validation curves.

Everything goes through the Workstation facade (in process or a server's): `train_runs` lists
the jobs (newest first), `train_history` gives a run's per-epoch metrics, `train_start` starts
one from the form (or resumes a stopped one), `train_cancel` stops one. While a job is queued
or running the screen asks for the list about once a second (a worker; the UI never waits)
and stops asking when none is, or while another screen is shown. A stopped run (interrupted
or failed) resumes from its last checkpoint (torch) or, keeping none (XGBoost, ensemble),
runs again from scratch; both are confirmed first, as is cancelling.

Layout: the form on the left from 120 columns; narrower, the jobs take the width and `n`
shows the form in their place (Esc from the form, or starting a job, brings them back).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, Header, ProgressBar, Static
from textual.widgets.data_table import ColumnKey

from engine.service.training import (
    RunHistory,
    RunSummary,
    TrainHistoryRequest,
    TrainRunRequest,
    TrainRunsRequest,
    TrainStartRequest,
)
from tui import messages
from tui.fmt import as_datetime, error_text, fmt_time, zone
from tui.screens.base import StationScreen
from tui.widgets.curve_plot import CurvePlot, is_loss
from tui.widgets.train_form import TrainForm

POLL_S = 1.0  # how often the job list is asked for while a job is queued or running
LIST_LIMIT = 100  # runs listed (newest first)
WIDE = 120  # columns from which the form stays beside the jobs
ACTIVE = ("queued", "running")
OUTCOME_WIDTH = 40  # an error's first line in the list (the detail below says it all)
STATUS_STYLE = {
    "running": "bold green",
    "queued": "yellow",
    "finished": "",
    "failed": "bold red",
    "interrupted": "yellow",
}
COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("kind", "kind"),
    ("market", "market"),
    ("progress", "progress"),
    ("model", "model / error"),
    ("took", "took"),
    ("started", "started"),
)


def progress_text(progress: float | None, step: str = "", width: int = 8) -> Text:
    """A run's progress as a bar and a percentage, then its phase while it runs ("epoch
    3/20"); "-" when it reported none."""
    if progress is None:
        return Text("-", style="dim")
    fraction = min(1.0, max(0.0, progress))
    full = round(fraction * width)
    bar = Text("█" * full, style="green")
    bar.append("░" * (width - full), style="dim")
    bar.append(f" {fraction * 100:3.0f}%")
    if step:
        bar.append(f" {step}", style="dim")
    return bar


def step_text(run: RunSummary) -> str:
    """The phase a running job is in: "epoch 3/20", "trial 2/10", "fold 1/3" ("" if none)."""
    by_phase = {p.phase: p for p in run.phases}
    for phase in ("epoch", "trial", "fold"):
        if phase in by_phase:
            p = by_phase[phase]
            return f"{phase} {p.done}/{p.total}"
    return ""


def took(run: RunSummary, now: datetime) -> str:
    """How long it ran (to `now` while it runs): 42s, 3m05s, 1h02m."""
    if run.started is None:
        return "-"
    end = run.finished if run.finished is not None else now
    seconds = int(max(0.0, (as_datetime(end) - as_datetime(run.started)).total_seconds()))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def outcome(run: RunSummary) -> Text:
    if run.model:
        return Text(run.model)
    if run.error:
        text = Text(run.error.splitlines()[0], style="red" if run.status == "failed" else "yellow")
        text.truncate(OUTCOME_WIDTH, overflow="ellipsis")
        return text
    return Text("")


class Confirm(ModalScreen[bool]):
    """Ask before an action that stops or repeats work: y/Enter yes, n/Esc no."""

    DEFAULT_CSS = """
    Confirm {
        align: center middle;
    }
    Confirm > Vertical {
        width: 60;
        max-width: 100%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    Confirm #question {
        margin-bottom: 1;
    }
    Confirm Horizontal {
        height: auto;
        align-horizontal: right;
    }
    Confirm Button {
        margin-left: 2;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No", key_display="n"),
    ]

    def __init__(self, question: str, yes: str) -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            with Horizontal():
                yield Button(f"{self.yes} (y)", variant="error", id="yes", compact=True)
                yield Button("Keep it (n)", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class TrainingScreen(StationScreen):
    """Training jobs (see the module docstring)."""

    DEFAULT_CSS = """
    TrainingScreen #body {
        height: 1fr;
    }
    TrainingScreen TrainForm {
        width: 40;
        border: round $primary-muted;
    }
    TrainingScreen #jobs-pane {
        width: 1fr;
    }
    TrainingScreen #jobs {
        height: auto;
        min-height: 5;
        max-height: 16;
        border: round $primary-muted;
    }
    TrainingScreen #detail {
        height: auto;
        padding: 0 1;
    }
    TrainingScreen #detail-text {
        height: auto;
        max-height: 3;
    }
    TrainingScreen #run-progress {
        height: 1;
    }
    TrainingScreen CurvePlot {
        height: 3fr;
        border: round $primary-muted;
    }
    TrainingScreen.-narrow TrainForm {
        display: none;
        width: 1fr;
    }
    TrainingScreen.-narrow.-form TrainForm {
        display: block;
    }
    TrainingScreen.-narrow.-form #jobs-pane {
        display: none;
    }
    TrainingScreen.-narrow #jobs {
        max-height: 9;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_job", "New job"),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("r", "resume_job", "Resume job"),
        Binding("f5", "refresh", "Refresh"),
        Binding("escape", "close_form", "Back to the jobs", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[int, RunSummary] = {}  # the listed runs, by id
        self.selected: int | None = None
        self.histories: dict[int, RunHistory] = {}  # fetched histories of runs that ended
        self._poll: Timer | None = None
        # the screen's parts, held: a worker finishing while the app closes finds them
        self.form: TrainForm  # made in compose: it starts on the app's market and unit
        self.table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True, id="jobs")
        self.detail = Static("", id="detail-text", markup=False)
        self.bar = ProgressBar(total=100, show_eta=False, id="run-progress")
        self.plot = CurvePlot(id="curves")
        self.polling = False  # whether the job list is being asked for every POLL_S

    def compose(self) -> ComposeResult:
        yield Header()
        self.form = TrainForm(self.station.market, self.station.unit, id="form")
        with Horizontal(id="body"):
            yield self.form
            with Vertical(id="jobs-pane"):
                yield self.table
                with Vertical(id="detail"):
                    yield self.detail
                    yield self.bar
                yield self.plot
        yield Footer()

    def on_mount(self) -> None:
        table = self.table
        table.border_title = "training jobs"
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.form.border_title = "start a job"
        self.plot.border_title = "loss curves"
        self._poll = self.set_interval(POLL_S, self._tick, pause=True)
        self._layout(self.size.width)
        if self.station.facade is None:
            self._say("The store is not available: this TUI runs a session without it.")
            self.form.disabled = True
            self.plot.clear("no store")
            return
        table.loading = True
        table.focus()
        self.refresh_jobs()

    def on_resize(self, event: events.Resize) -> None:
        self._layout(event.size.width)

    def _layout(self, width: int) -> None:
        self.set_class(width < WIDE, "-narrow")

    def on_screen_resume(self) -> None:
        if self.station.facade is not None and self.is_mounted:
            self.refresh_jobs()

    def on_screen_suspend(self) -> None:
        self._polling(False)  # nobody sees it: no polling until it is shown again

    def on_clock_changed(self, message: messages.ClockChanged) -> None:
        self._fill_table()
        self._show_detail()

    # --- the job list --------------------------------------------------------------------

    @work(group="jobs", exclusive=True)
    async def refresh_jobs(self) -> None:
        """Ask for the job list (and the selected run's curves) in a worker."""
        await self._load()

    def _tick(self) -> None:
        if not any(w.node is self and w.group == "jobs" and w.is_running for w in self.workers):
            self.refresh_jobs()

    async def _load(self) -> None:
        table = self.table
        try:
            listed = await self.station.call("train_runs", TrainRunsRequest(limit=LIST_LIMIT))
        except Exception as exc:  # noqa: BLE001 - shown, never a traceback
            self.notify(error_text(exc), severity="error")
            self._polling(False)
            return
        finally:
            table.loading = False
        self.runs = {run.run: run for run in listed.root}
        self._fill_table()
        if self.selected is None and self.runs:
            self.selected = next(iter(self.runs))
        await self._load_curves()
        self._show_detail()
        self._polling(any(run.status in ACTIVE for run in self.runs.values()))

    def _polling(self, on: bool) -> None:
        """Ask for the job list every POLL_S (while a job is queued or running), or stop."""
        self.polling = on
        if self._poll is not None:
            if on:
                self._poll.resume()
            else:
                self._poll.pause()

    def _cells(self, run: RunSummary) -> dict[str, Any]:
        now = self.station.now()
        return {
            "run": Text(str(run.run), justify="right"),
            "status": Text(run.status, style=STATUS_STYLE.get(run.status, "")),
            "kind": run.kind or "-",
            "market": f"{run.market or '-'} {run.unit or ''}".strip(),
            "progress": progress_text(run.progress, step_text(run)),
            "started": fmt_time(run.started, utc=self.station.utc),
            "took": took(run, now),
            "model": outcome(run),
        }

    def _fill_table(self) -> None:
        """The table to the listed runs, updated in place (the cursor stays on its run)."""
        table = self.table
        table.columns[ColumnKey("started")].label = Text(f"started {zone(self.station.utc)}")
        keys = [str(run) for run in self.runs]
        if [row.value for row in table.rows] != keys:
            table.clear()
            for run in self.runs.values():
                cells = self._cells(run)
                table.add_row(*(cells[key] for key, _ in COLUMNS), key=str(run.run))
            if self.selected is not None and str(self.selected) in keys:
                table.move_cursor(row=keys.index(str(self.selected)), animate=False)
        else:
            for run in self.runs.values():
                for key, value in self._cells(run).items():
                    table.update_cell(str(run.run), key, value)
        table.refresh()

    @on(DataTable.RowHighlighted, "#jobs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is None:
            return
        run = int(event.row_key.value)
        if run != self.selected:
            self.selected = run
            self._show_detail()
            self._selected_curves()

    @work(group="curves", exclusive=True)
    async def _selected_curves(self) -> None:
        await self._load_curves()
        self._show_detail()

    # --- the selected run ----------------------------------------------------------------

    async def _load_curves(self) -> None:
        """The selected run's per-epoch metrics to the plot (fetched again while it runs)."""
        run_id = self.selected
        plot = self.plot
        if run_id is None or run_id not in self.runs:
            plot.clear("no training run yet: start one from the form")
            return
        run = self.runs[run_id]
        history = self.histories.get(run_id)
        if history is None or history.status != run.status or run.status in ACTIVE:
            try:
                answer = await self.station.call("train_history", TrainHistoryRequest(run=run_id))
            except Exception as exc:  # noqa: BLE001 - shown, never a traceback
                self.notify(error_text(exc), severity="error")
                return
            if not answer.root:
                return
            history = answer.root[0]
            history.status = run.status  # as listed: a later listing tells it changed
            self.histories[run_id] = history
        if run_id != self.selected:
            return  # another run was selected meanwhile
        title = f"run {run_id} · {run.kind} {run.market} {run.unit}"
        if history.epochs:
            plot.show(title, history.epochs)
        else:
            plot.clear(f"{title}: no epoch recorded yet")

    def _show_detail(self) -> None:
        run = self.runs.get(self.selected) if self.selected is not None else None
        bar = self.bar
        if run is None:
            self._say("No training run yet: start one from the form (n).")
            bar.update(progress=0)
            return
        parts = [f"run {run.run}", f"{run.kind} {run.market} {run.unit}", run.status]
        step = step_text(run)
        if step:
            parts.append(step)
        latest = self._latest(run.run)
        if latest:
            parts.append(latest)
        lines = [" · ".join(parts)]
        if run.error:
            lines.append(run.error)
        if run.resume == "checkpoint":
            lines.append("r resumes it from its last checkpoint")
        elif run.resume == "restart":
            lines.append("r runs it again from scratch (it keeps no checkpoint)")
        elif run.status in ACTIVE:
            lines.append("c cancels it (resumable)")
        self._say("\n".join(lines))
        bar.update(progress=round((run.progress or 0.0) * 100, 1))

    def _latest(self, run_id: int) -> str:
        """The last recorded epoch's metrics, as text."""
        history = self.histories.get(run_id)
        if history is None or not history.epochs:
            return ""
        epochs = [e for e in history.epochs if e.split == "epoch"] or history.epochs
        last = epochs[-1]
        metrics = sorted(last.metrics.items(), key=lambda item: not is_loss(item[0]))
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics if v is not None)
        return f"{last.split} {last.step + 1}: {shown}" if shown else ""

    def _say(self, text: str) -> None:
        self.detail.update(text)

    # --- actions -------------------------------------------------------------------------

    def action_new_job(self) -> None:
        """Show the form (narrow: in the jobs' place) and put the cursor in it."""
        self.add_class("-form")
        self.query_one("#kind").focus()

    def action_refresh(self) -> None:
        if self.station.facade is not None:
            self.refresh_jobs()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "close_form":  # Esc leaves the screen unless the form is open
            return self.has_class("-form")
        return True

    def action_close_form(self) -> None:
        self._close_form()

    def _close_form(self) -> None:
        self.remove_class("-form")
        self.table.focus()

    @on(TrainForm.Submitted)
    def _submitted(self, event: TrainForm.Submitted) -> None:
        self._start(event.request)

    @work(group="start", exclusive=True)
    async def _start(self, request: TrainStartRequest) -> None:
        what = (
            f"resuming run {request.resume}"
            if request.resume is not None
            else f"starting {request.kind} on {request.market} {request.unit}m"
        )
        self._say(f"{what}…")
        try:
            started = await self.station.call("train_start", request)
        except Exception as exc:  # noqa: BLE001 - shown, never a traceback
            self.notify(error_text(exc), severity="error")
            self.selected = None  # the newest run: a refused one is recorded as failed
            await self._load()
            return
        self.notify(f"run {started.run} {started.status}")
        self.selected = started.run
        self.histories.pop(started.run, None)
        if request.resume is None and self.has_class("-narrow"):
            self._close_form()
        await self._load()

    def _selected_run(self) -> RunSummary | None:
        run = self.runs.get(self.selected) if self.selected is not None else None
        if run is None:
            self.notify("no run selected", severity="warning")
        return run

    def action_cancel_job(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        if run.status not in ACTIVE:
            self.notify(f"run {run.run} is {run.status}: nothing to cancel", severity="warning")
            return
        question = (
            f"Cancel run {run.run} ({run.kind} {run.market} {run.unit}, {run.status})?\n"
            "Its worker stops now; the run reads interrupted and can be resumed (r)."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._cancel(run.run)

        self.app.push_screen(Confirm(question, "Cancel the run"), answered)

    @work(group="cancel", exclusive=True)
    async def _cancel(self, run_id: int) -> None:
        self._say(f"cancelling run {run_id}…")
        try:
            stopped = await self.station.call("train_cancel", TrainRunRequest(run=run_id))
        except Exception as exc:  # noqa: BLE001 - shown, never a traceback
            self.notify(error_text(exc), severity="error")
        else:
            self.notify(f"run {run_id} {stopped.status}")
        await self._load()

    def action_resume_job(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        if run.resume is None:
            self.notify(
                f"run {run.run} is {run.status}: only an interrupted or failed run resumes",
                severity="warning",
            )
            return
        restart = run.resume == "restart"
        question = (
            f"Run {run.run} ({run.kind} {run.market} {run.unit}) keeps no checkpoint."
            "\nTrain it again from scratch with its own settings?"
            if restart
            else f"Resume run {run.run} ({run.kind} {run.market} {run.unit})"
            " from its last checkpoint?"
        )

        def answered(yes: bool | None) -> None:
            if yes:
                request = TrainStartRequest(resume=run.run, restart=restart)
                self._start(request)

        self.app.push_screen(Confirm(question, "Restart it" if restart else "Resume it"), answered)
