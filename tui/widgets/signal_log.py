"""SignalLog: a table of the engine's signals, oldest first, following the newest.

The chart screen shows one market's signals in it (time, action, confidence, source,
reason); the Signals screen shows every market's (`wide`: date and time, market, unit, mode
too), with a filter. Times are KST unless `utc`. Rows are appended one at a time (a
DataTable cannot insert at the top, and rebuilding thousands of rows per signal stalls a
fast replay); a filter, the holds switch or the zone rebuilds the table once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
from rich.text import Text
from textual.coordinate import Coordinate
from textual.reactive import reactive
from textual.widgets import DataTable

from engine.trading.strategies import Signal
from tui.fmt import fmt_time

Key = tuple[pd.Timestamp, str, str | None, str]


def utc_stamp(ts: object) -> pd.Timestamp:
    """`ts` as a UTC timestamp (naive ones are UTC, as the store keeps them)."""
    stamp = pd.Timestamp(ts)  # type: ignore[arg-type]
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@dataclass(frozen=True)
class SignalRow:
    """One signal and what the table knows of where it came from (the unit and the session
    mode, when known: a stored signal carries both, the session's its view's)."""

    signal: Signal
    unit: str | None = None
    mode: str | None = None
    seq: int = field(default=0, compare=False)  # the row's key in the table

    @property
    def kind(self) -> str:
        """model when a model's probabilities decided it, else rule."""
        return "model" if self.signal.model_id is not None else "rule"

    @property
    def key(self) -> Key:
        """The same signal however it reached the table (stored, the session, the server)."""
        s = self.signal
        return (utc_stamp(s.ts), s.market, self.unit, s.source)


class SignalLog(DataTable[str | Text]):
    """The last `max_rows` signals, oldest first, following the newest like `tail -f`
    (unless the user moved the cursor up). `matches` and `show_holds` choose the rows shown;
    every signal is kept (up to `max_rows`) whatever is shown."""

    COMPONENT_CLASSES: ClassVar[set[str]] = DataTable.COMPONENT_CLASSES | {
        "signal-log--buy",
        "signal-log--sell",
        "signal-log--hold",
    }

    MAX_ROWS = 500

    show_holds: reactive[bool] = reactive(True)
    utc: reactive[bool] = reactive(False)

    def __init__(
        self,
        *,
        wide: bool = False,
        max_rows: int | None = None,
        table_rows: int | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.wide = wide
        self.max_rows = max_rows or self.MAX_ROWS
        # the table shows the newest `table_rows` matching rows; past that by a fifth it is
        # redrawn once (a DataTable's remove_row re-indexes every row: one per new signal
        # on a table of thousands costs more than the signal)
        self.table_rows = min(table_rows or self.max_rows, self.max_rows)
        self._slack = 0 if self.table_rows == self.max_rows else max(1, self.table_rows // 5)
        self._shown: deque[SignalRow] = deque()  # the rows in the table, oldest first
        self._rows: deque[SignalRow] = deque()
        self._seen: set[Key] = set()
        self._by_seq: dict[str, SignalRow] = {}  # table row key -> row
        self._seq = 0
        self._matches: Callable[[SignalRow], bool] | None = None

    def on_mount(self) -> None:
        self.set_reactive(SignalLog.utc, bool(getattr(self.app, "utc", False)))
        names = ("time", "market", "unit", "action", "conf", "source", "reason")
        for name in names if self.wide else ("time", "action", "conf", "source", "reason"):
            self.add_column(name, key=name)
        if self._rows:  # signals added before the table could show them
            self._redraw()

    # --- adding ---------------------------------------------------------------------------

    def add_signal(
        self, signal: Signal, *, unit: str | None = None, mode: str | None = None
    ) -> bool:
        """Append one signal (the newest); False when the log holds it already."""
        row = self._keep(signal, unit, mode)
        if row is None:
            return False
        self._trim()
        if self._shows(row):
            self._append(row)
        return True

    def load(self, rows: Iterable[SignalRow]) -> int:
        """Merge older signals (stored ones) in time (and market) order and redraw once; how
        many were new."""
        added = [kept for row in rows if (kept := self._keep(row.signal, row.unit, row.mode))]
        if added:
            ordered = sorted(self._rows, key=lambda r: (utc_stamp(r.signal.ts), r.signal.market))
            self._rows = deque(ordered)
            self._trim(redraw=False)
            self._redraw()
        return len(added)

    def _keep(self, signal: Signal, unit: str | None, mode: str | None) -> SignalRow | None:
        self._seq += 1
        row = SignalRow(signal, unit, mode, self._seq)
        if row.key in self._seen:
            return None
        self._seen.add(row.key)
        self._rows.append(row)
        self._by_seq[str(row.seq)] = row
        return row

    def _trim(self, *, redraw: bool = True) -> None:
        while len(self._rows) > self.max_rows:
            old = self._rows.popleft()
            self._seen.discard(old.key)
            del self._by_seq[str(old.seq)]
            if redraw and self._shown and self._shown[0] is old:
                self._shown.popleft()
                self.remove_row(str(old.seq))

    # --- what is shown --------------------------------------------------------------------

    @property
    def signals(self) -> list[Signal]:
        """The signals the table shows, oldest first."""
        return [row.signal for row in self.shown]

    @property
    def shown(self) -> list[SignalRow]:
        """The rows the table shows, oldest first."""
        return list(self._shown)

    def holds(self, row: SignalRow) -> bool:
        """Whether the log holds `row`'s signal already (shown or not)."""
        return row.key in self._seen

    def row_at(self, index: int) -> SignalRow | None:
        """The row shown at table row `index` (None: no such row)."""
        if not 0 <= index < self.row_count:
            return None
        key = self.coordinate_to_cell_key(Coordinate(index, 0)).row_key.value
        return self._by_seq.get(key or "")

    @property
    def kept(self) -> int:
        """Every signal the log holds, shown or not."""
        return len(self._rows)

    def set_filter(self, matches: Callable[[SignalRow], bool] | None) -> None:
        """Show only the rows `matches` accepts (None: every row); redraws."""
        self._matches = matches
        self._redraw()

    def watch_show_holds(self) -> None:
        self._redraw()

    def watch_utc(self) -> None:
        self._redraw()

    def _shows(self, row: SignalRow) -> bool:
        if not self.show_holds and row.signal.action == "hold":
            return False
        return self._matches is None or self._matches(row)

    def _redraw(self, cursor: str | None = None) -> None:
        """Draw the newest `table_rows` matching rows; the cursor on row key `cursor` when
        it is still shown, else on the newest."""
        if not self.is_mounted:
            return
        self.clear()
        matching = [row for row in self._rows if self._shows(row)]
        self._shown = deque(matching[-self.table_rows :])
        for row in self._shown:
            self.add_row(*self._cells(row), key=str(row.seq))
        if cursor is not None and cursor in self.rows:
            self.move_cursor(row=self.get_row_index(cursor), animate=False)
        elif self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)

    def _cursor_key(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value

    def _append(self, row: SignalRow) -> None:
        following = self.cursor_row >= self.row_count - 1  # the user has not scrolled back
        if len(self._shown) >= self.table_rows + self._slack:
            self._shown.append(row)
            # the newest table_rows again: one redraw per `_slack` signals
            self._redraw(None if following else self._cursor_key())
            return
        self._shown.append(row)
        self.add_row(*self._cells(row), key=str(row.seq))
        if following:
            self.move_cursor(row=self.row_count - 1, animate=False)

    def _cells(self, row: SignalRow) -> list[str | Text]:
        signal = row.signal
        style = self.get_component_rich_style(f"signal-log--{signal.action}")
        confidence = signal.confidence
        cells: list[str | Text] = [
            fmt_time(signal.ts, utc=self.utc, fmt="%m-%d %H:%M" if self.wide else "%H:%M")
        ]
        if self.wide:
            cells += [signal.market, row.unit or "-"]
        return [
            *cells,
            Text(signal.action, style=style),
            "-" if confidence is None else f"{confidence:.2f}",
            Text(signal.source),  # Text: a model name or reason may hold [brackets]
            Text(signal.reason or ""),
        ]
