"""TrainForm: the Training screen's form for a new training job (what `upquant train` takes).

One compact row per option; the options a kind does not take are hidden (rounds for XGBoost,
epochs, batch size and window for the torch models, members and method for an ensemble). An
empty optional field means the kind's default (its placeholder says which). Start (the
button, or Enter in a field) posts `TrainForm.Submitted` with the `TrainStartRequest`; a value
the request refuses is said in the form's status line and nothing is posted.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from engine.research.labels import SCHEMES
from engine.service.training import TrainStartRequest
from engine.upbit.markets import UNITS
from models import ALL_KINDS
from models.ensemble import METHODS

# which rows each kind shows beyond the common ones (engine.training.kind_params' options)
KIND_ROWS: dict[str, tuple[str, ...]] = {
    "xgboost": ("rounds",),
    "lstm": ("epochs", "batch", "window"),
    "transformer": ("epochs", "batch", "window"),
    "ensemble": ("members", "method"),
}
OPTIONAL_ROWS = ("rounds", "epochs", "batch", "window", "members", "method")
DEVICES = ("auto", "cpu", "cuda")


def _row(label: str, field: Any, name: str) -> Horizontal:
    return Horizontal(Label(label, classes="form-label"), field, id=f"row-{name}", classes="row")


class TrainForm(VerticalScroll):
    """The form (see the module docstring)."""

    DEFAULT_CSS = """
    TrainForm {
        height: auto;
        max-height: 100%;
        padding: 0 1;
    }
    TrainForm .row {
        height: 1;
        margin-bottom: 0;
    }
    TrainForm .form-label {
        width: 11;
        color: $text-muted;
    }
    TrainForm Input, TrainForm Select {
        width: 1fr;
    }
    TrainForm .hidden {
        display: none;
    }
    TrainForm #form-title {
        text-style: bold;
        margin-bottom: 1;
    }
    TrainForm #start {
        margin-top: 1;
        width: 100%;
    }
    TrainForm #form-status {
        height: auto;
        color: $error;
    }
    """

    class Submitted(Message):
        """Start was pressed with a valid request."""

        def __init__(self, request: TrainStartRequest) -> None:
            super().__init__()
            self.request = request

    INTEGER: ClassVar[dict[str, str]] = {"type": "integer"}

    def __init__(self, market: str, unit: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.market, self.unit = market, unit

    def compose(self) -> ComposeResult:
        def select(name: str, options: tuple[str, ...], value: str) -> Select[str]:
            return Select(
                [(o, o) for o in options], value=value, allow_blank=False, compact=True, id=name
            )

        def field(name: str, value: str = "", placeholder: str = "", **kw: Any) -> Input:
            return Input(value, placeholder, compact=True, id=name, **kw)

        yield Static("New training job", id="form-title")
        yield _row("kind", select("kind", ALL_KINDS, "xgboost"), "kind")
        yield _row("market", field("market", self.market), "market")
        yield _row("unit", select("unit", UNITS, self.unit), "unit")
        yield _row("rounds", field("rounds", placeholder="300", **self.INTEGER), "rounds")
        yield _row("epochs", field("epochs", placeholder="20", **self.INTEGER), "epochs")
        yield _row("batch", field("batch", placeholder="256", **self.INTEGER), "batch")
        yield _row("window", field("window", placeholder="60", **self.INTEGER), "window")
        yield _row("members", field("members", placeholder="name, name@2, id"), "members")
        yield _row("method", select("method", METHODS, "soft-vote"), "method")
        yield _row("horizon", field("horizon", "10", **self.INTEGER), "horizon")
        yield _row("threshold", field("threshold", "0.001", type="number"), "threshold")
        yield _row("labels", select("scheme", SCHEMES, "fixed_horizon"), "scheme")
        yield _row("trials", field("trials", "0", **self.INTEGER), "trials")
        yield _row("device", select("device", DEVICES, "auto"), "device")
        yield _row("name", field("name", placeholder="KIND-MARKET-UNIT"), "name")
        yield Button("Start", variant="primary", compact=True, id="start")
        yield Static("", id="form-status", markup=False)

    def on_mount(self) -> None:
        self._show_rows("xgboost")

    @on(Select.Changed, "#kind")
    def _kind_changed(self, event: Select.Changed) -> None:
        self._show_rows(str(event.value))

    def _show_rows(self, kind: str) -> None:
        for name in OPTIONAL_ROWS:
            self.query_one(f"#row-{name}").set_class(name not in KIND_ROWS[kind], "hidden")

    def _text(self, name: str) -> str:
        return self.query_one(f"#{name}", Input).value.strip()

    def _choice(self, name: str) -> str:
        return str(self.query_one(f"#{name}", Select).value)

    def _number(self, name: str) -> str | None:
        return self._text(name) or None

    def request(self) -> TrainStartRequest:
        """The request the form says (pydantic's ValidationError for a refused value)."""
        kind = self._choice("kind")
        shown = KIND_ROWS[kind]
        members = [m.strip() for m in self._text("members").split(",") if m.strip()]
        values: dict[str, Any] = {
            "kind": kind,
            "market": self._text("market").upper(),
            "unit": self._choice("unit"),
            "horizon": self._number("horizon") or 10,
            "threshold": self._number("threshold") or 0.001,
            "scheme": self._choice("scheme"),
            "trials": self._number("trials") or 0,
            "device": self._choice("device"),
            "name": self._text("name") or None,
        }
        if "rounds" in shown:
            values["n_estimators"] = self._number("rounds")
        if "epochs" in shown:
            values.update(
                epochs=self._number("epochs"),
                batch_size=self._number("batch"),
                window=self._number("window"),
            )
        if "members" in shown:
            values.update(members=members or None, method=self._choice("method"))
        return TrainStartRequest.model_validate(values)

    def say(self, text: str) -> None:
        """Show `text` (a refused value) under the Start button ("" clears it)."""
        self.query_one("#form-status", Static).update(text)

    @on(Button.Pressed, "#start")
    @on(Input.Submitted)
    def submit(self, event: Message) -> None:
        event.stop()
        try:
            request = self.request()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            self.say(f"{where}: {first['msg']}")
            return
        self.say("")
        self.post_message(self.Submitted(request))
