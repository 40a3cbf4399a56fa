"""BoardTable: a keyed table of fixed-width columns whose drawing costs microseconds a line.

Textual's DataTable renders every visible cell again through Rich whenever any cell changes
(its caches are keyed by an update counter) and when its screen is shown again: ~50 ms for
the Markets screen's 40x10 cells, so a key pressed during a refresh of 200 live markets
waited for it. Here each row's segments are made once per change of its cells (Rich renders
the changed cells only), and a line is those segments with the row's style (header, zebra
stripe, cursor) applied and cropped to the view: drawing the whole table is a few ms.

Rows are keyed (a market); the screen sets each row's cells (`set_row`: unchanged cells cost
nothing), removes rows, and sets the order (`set_order`). The cursor follows its row's key
across re-orders. The header stays on the first line while the rows scroll; clicking a
header cell posts `HeaderClicked`, clicking a row moves the cursor there (clicking it again
posts `Selected`), moving the cursor posts `Highlighted`. The Enter key is left to the
screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

PADDING = 1  # spaces on each side of a cell

Cell = Text | str


@dataclass(frozen=True)
class BoardColumn:
    key: str
    label: str
    width: int


class _RowMessage(Message):
    def __init__(self, table: BoardTable, key: str) -> None:
        super().__init__()
        self.table, self.key = table, key

    @property
    def control(self) -> BoardTable:
        return self.table


class BoardTable(ScrollView, can_focus=True):
    """See the module docstring."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "board--header",
        "board--even",
        "board--cursor",
    }
    DEFAULT_CSS = """
    BoardTable {
        background: $surface;
        color: $foreground;
        &:focus {
            background-tint: $foreground 5%;
            & > .board--header { background-tint: $foreground 5%; }
            & > .board--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        &:dark > .board--even { background: $surface-darken-1 40%; }
        & > .board--header { text-style: bold; background: $panel; color: $foreground; }
        & > .board--even { background: $surface-lighten-1 50%; }
        & > .board--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """  # DataTable's look (zebra stripes on the even rows, counted from 0)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First row", show=False),
        Binding("end", "edge(1)", "Last row", show=False),
    ]

    class Highlighted(_RowMessage):
        """The cursor moved to the row `key`."""

    class Selected(_RowMessage):
        """The row under the cursor was clicked again."""

    class HeaderClicked(Message):
        """The header of column `column` (its key) was clicked."""

        def __init__(self, table: BoardTable, column: str) -> None:
            super().__init__()
            self.table, self.column = table, column

        @property
        def control(self) -> BoardTable:
            return self.table

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.columns: list[BoardColumn] = []
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._segments: dict[str, list[Segment]] = {}  # a row's cells drawn, until they change
        self._header: list[Segment] | None = None
        self.cursor_row = 0

    # --- contents -------------------------------------------------------------------------

    def set_columns(self, columns: Iterable[BoardColumn]) -> None:
        """Columns anew; every row is dropped (the cells are per column)."""
        self.columns = list(columns)
        self._cells, self._segments, self._header = {}, {}, None
        self.set_order([])

    def set_row(self, key: str, cells: Sequence[Cell]) -> None:
        """The cells of row `key` (one per column; a new key is shown once `set_order` lists
        it). Cells equal to the ones held cost nothing."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row {key!r}: {len(cells)} cells for {len(self.columns)} columns")
        cells = tuple(cells)
        if self._cells.get(key) != cells:
            self._cells[key] = cells
            self._segments.pop(key, None)
            if key in self._index:
                self.refresh()

    def remove_row(self, key: str) -> None:
        self._cells.pop(key, None)
        self._segments.pop(key, None)
        if key in self._index:
            self.set_order([k for k in self._order if k != key])

    def set_order(self, keys: Sequence[str]) -> None:
        """The rows shown, top to bottom (each must have its cells); the cursor stays on its
        row when that row is still shown."""
        missing = [key for key in keys if key not in self._cells]
        if missing:
            raise KeyError(f"no cells for rows {missing[:3]}")
        before = self.cursor_key
        self._order = list(keys)
        self._index = {key: i for i, key in enumerate(self._order)}
        width = sum(column.width + 2 * PADDING for column in self.columns)
        self.virtual_size = Size(width, len(self._order) + 1)  # + the header
        if before is not None and before in self._index:
            self.cursor_row = self._index[before]
        self.cursor_row = max(0, min(self.cursor_row, len(self._order) - 1))
        self.refresh()

    @property
    def keys(self) -> list[str]:
        """The rows shown, top to bottom."""
        return list(self._order)

    @property
    def row_count(self) -> int:
        return len(self._order)

    def cell(self, key: str, column: str) -> Text:
        """The cell of row `key` in column `column` (its key), as Text."""
        at = [c.key for c in self.columns].index(column)
        cell = self._cells[key][at]
        return cell if isinstance(cell, Text) else Text(cell)

    def column_x(self, column: str) -> int:
        """The x offset of column `column` (its key) in the table (unscrolled)."""
        x = 0
        for each in self.columns:
            if each.key == column:
                return x
            x += each.width + 2 * PADDING
        raise KeyError(column)

    # --- the cursor -----------------------------------------------------------------------

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor (None: no rows)."""
        if not self._order:
            return None
        return self._order[min(self.cursor_row, len(self._order) - 1)]

    def move_to(self, key: str) -> None:
        """Put the cursor on row `key` (shown), scrolled into view."""
        self._move(self._index[key])

    def _move(self, row: int) -> None:
        if not self._order:
            return
        row = max(0, min(row, len(self._order) - 1))
        moved = row != self.cursor_row
        self.cursor_row = row
        self._scroll_to_cursor()
        self.refresh()
        if moved:
            self.post_message(self.Highlighted(self, self._order[row]))

    def _rows_shown(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self) -> None:
        top, shown = int(self.scroll_offset.y), self._rows_shown()
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + shown:
            self.scroll_to(y=self.cursor_row - shown + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        self._move(self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self._move(self.cursor_row + step * self._rows_shown())

    def action_edge(self, end: int) -> None:
        self._move(len(self._order) - 1 if end else 0)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x, y = offset.x + int(self.scroll_offset.x), offset.y
        if y == 0:
            for column in self.columns:
                x -= column.width + 2 * PADDING
                if x < 0:
                    self.post_message(self.HeaderClicked(self, column.key))
                    return
            return
        row = int(self.scroll_offset.y) + y - 1
        if row >= len(self._order):
            return
        if row == self.cursor_row:
            self.post_message(self.Selected(self, self._order[row]))
        else:
            self._move(row)

    def on_focus(self) -> None:
        self.refresh()  # the cursor's focused style

    def on_blur(self) -> None:
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.refresh()

    # --- drawing --------------------------------------------------------------------------

    def _draw_cells(self, cells: Sequence[Cell]) -> list[Segment]:
        console = self.app.console
        segments: list[Segment] = []
        for column, cell in zip(self.columns, cells, strict=True):
            text = cell if isinstance(cell, Text) else Text(cell)
            if text.cell_len > column.width:
                text = text.copy()
                text.truncate(column.width, overflow="crop")
            room = column.width - text.cell_len
            left = room if text.justify == "right" else room // 2 if text.justify == "center" else 0
            segments.append(Segment(" " * (PADDING + left)))
            drawn = text.render(console)
            if not text.spans and text.style:  # Text.render applies its style with spans only
                drawn = Segment.apply_style(drawn, console.get_style(text.style))
            segments.extend(drawn)
            segments.append(Segment(" " * (PADDING + room - left)))
        return [segment for segment in segments if segment.text]

    def _row(self, key: str) -> list[Segment]:
        segments = self._segments.get(key)
        if segments is None:
            segments = self._segments[key] = self._draw_cells(self._cells[key])
        return segments

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x, scroll_y = int(self.scroll_offset.x), int(self.scroll_offset.y)
        base = self.rich_style
        if y == 0:
            if self._header is None:
                self._header = self._draw_cells([Text(c.label) for c in self.columns])
            segments = self._header
            style = base + self.get_component_rich_style("board--header")
        else:
            row = scroll_y + y - 1
            if row >= len(self._order):
                return Strip.blank(width, base)
            segments = self._row(self._order[row])
            if row == self.cursor_row:
                style = self.get_component_rich_style("board--cursor")
            elif row % 2 == 0:
                style = self.get_component_rich_style("board--even")
            else:
                style = Style()
            style = base + style
        total = sum(segment.cell_length for segment in segments)
        strip = Strip(Segment.apply_style(segments, style), total)
        return strip.crop_extend(scroll_x, scroll_x + width, style)
