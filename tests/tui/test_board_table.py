"""BoardTable (tui/widgets/board_table.py): keyed rows, the cursor on its key, clicks, and
lines drawn from each row's cells made once per change."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult

from tui.widgets.board_table import BoardColumn, BoardTable

COLUMNS = [BoardColumn("market", "Market", 8), BoardColumn("price", "Price", 6)]


class Board(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def compose(self) -> ComposeResult:
        yield BoardTable(id="t")

    def on_board_table_highlighted(self, message: BoardTable.Highlighted) -> None:
        self.seen.append(("highlighted", message.key))

    def on_board_table_selected(self, message: BoardTable.Selected) -> None:
        self.seen.append(("selected", message.key))

    def on_board_table_header_clicked(self, message: BoardTable.HeaderClicked) -> None:
        self.seen.append(("header", message.column))


def fill(table: BoardTable, n: int) -> list[str]:
    table.set_columns(COLUMNS)
    keys = [f"M{i:03d}" for i in range(n)]
    for i, key in enumerate(keys):
        table.set_row(key, (key, Text(f"{i}", justify="right")))
    table.set_order(keys)
    return keys


def plain(table: BoardTable, y: int) -> str:
    return "".join(segment.text for segment in table.render_line(y))


async def test_rows_are_keyed_and_the_cursor_stays_on_its_row_across_reorders():
    app = Board()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(BoardTable)
        keys = fill(table, 5)
        table.focus()
        await pilot.press("down", "down")
        assert table.cursor_key == "M002"
        assert app.seen[-1] == ("highlighted", "M002")
        table.set_order(list(reversed(keys)))  # a sort: the cursor follows its market
        assert table.cursor_key == "M002" and table.cursor_row == 2
        table.remove_row("M002")  # gone: the cursor stays in place, on the next row
        assert table.keys == ["M004", "M003", "M001", "M000"]
        assert table.cursor_key == "M001"
        await pilot.press("end")
        assert table.cursor_key == "M000"
        await pilot.press("home")
        assert table.cursor_key == "M004"


async def test_lines_are_the_cells_padded_justified_and_cropped_with_their_styles():
    app = Board()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(BoardTable)
        table.set_columns(COLUMNS)
        table.set_row(
            "A", (Text("KRW-BTC-LONG", style="bold"), Text("12", style="green", justify="right"))
        )
        table.set_order(["A"])
        await pilot.pause()
        assert plain(table, 0).startswith(" Market    Price   ")  # a space each side of a cell
        assert plain(table, 1).startswith(" KRW-BTC-      12 ")  # cropped; right-justified
        green = [s for s in table.render_line(1) if s.text == "12"]
        assert green and green[0].style is not None and green[0].style.color.name == "green"
        assert table.cell("A", "price").plain == "12"


async def test_equal_cells_cost_nothing_and_a_changed_row_is_drawn_again():
    app = Board()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(BoardTable)
        fill(table, 3)
        await pilot.pause()
        table.render_line(1)
        drawn = table._segments["M000"]
        table.set_row("M000", ("M000", Text("0", justify="right")))  # equal cells
        assert table._segments["M000"] is drawn
        table.set_row("M000", ("M000", Text("7", justify="right")))
        assert "M000" not in table._segments
        assert plain(table, 1).startswith(" M000           7 ")


async def test_clicks_sort_by_a_header_move_the_cursor_and_select_a_row():
    app = Board()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(BoardTable)
        fill(table, 5)
        await pilot.pause()
        await pilot.click(BoardTable, offset=(table.column_x("price") + 1, 0))
        assert app.seen[-1] == ("header", "price")
        await pilot.click(BoardTable, offset=(2, 3))  # the third row
        assert table.cursor_key == "M002" and app.seen[-1] == ("highlighted", "M002")
        await pilot.click(BoardTable, offset=(2, 3))  # again: selected
        assert app.seen[-1] == ("selected", "M002")


async def test_the_header_stays_and_the_cursor_is_scrolled_into_view():
    app = Board()
    async with app.run_test(size=(40, 6)) as pilot:  # 5 lines shown: the header and 4 rows
        table = app.query_one(BoardTable)
        fill(table, 50)
        table.focus()
        await pilot.press("pagedown", "pagedown")
        await pilot.pause()
        row = table.cursor_row
        assert row >= 6
        top = int(table.scroll_offset.y)
        assert top <= row < top + table.scrollable_content_region.height - 1
        assert plain(table, 0).startswith(" Market")  # still the header
        shown = [plain(table, y)[1:5] for y in range(1, table.scrollable_content_region.height)]
        assert table.cursor_key in shown
