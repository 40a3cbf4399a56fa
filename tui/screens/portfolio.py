"""PortfolioScreen (key 7): the paper broker's book, as the `paper` operation answers it.

The account (`a` switches live / replay): cash, equity, realised and unrealised PnL
(green gains, red losses) and the return; the open positions (units, entry, last, value,
unrealised PnL in KRW and %), the pending orders and the newest fills. The book is asked
for again about every REFRESH_S seconds in a worker while the screen is shown (`r`: now);
the tables are redrawn only when the answer changed, so the cursor stays where it was.
Paper only: nothing here sends an order anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Static

from tui import messages
from tui.fmt import error_text, fmt_krw, fmt_pct, fmt_price, fmt_time
from tui.screens.base import StationScreen

if TYPE_CHECKING:
    from engine.service.paper import PaperBook

REFRESH_S = 2.0
ACCOUNTS = ("live", "replay")
FILLS = 50  # the newest fills shown
WIDE = 120  # from this many columns on: every column, orders beside fills


def _signed(amount: float, text: str) -> Text:
    """`text` green for a gain, red for a loss."""
    style = "green" if amount > 0 else "red" if amount < 0 else ""
    return Text(text, style=style)


def _units(units: float) -> str:
    return f"{units:,.8f}".rstrip("0").rstrip(".")


class PortfolioScreen(StationScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "account", "Live/replay account"),
        Binding("r", "refresh", "Refresh"),
    ]

    DEFAULT_CSS = """
    PortfolioScreen #summary { height: 3; padding: 0 1; background: $boost; }
    PortfolioScreen DataTable { height: 1fr; border: round $secondary; }
    PortfolioScreen #positions { height: 1fr; }
    PortfolioScreen #orders { height: 1fr; }
    PortfolioScreen #pending { width: 1fr; display: none; }
    PortfolioScreen #fills { width: 2fr; }
    PortfolioScreen.-has-pending #pending { display: block; }
    PortfolioScreen.-narrow #orders { layout: vertical; }
    PortfolioScreen.-narrow #pending { width: 1fr; height: auto; max-height: 6; }
    PortfolioScreen.-narrow #fills { width: 1fr; height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.account = ACCOUNTS[0]
        self.chosen = False  # the user picked the account (else: the live one, or replay's)
        self.book: PaperBook | None = None
        self.narrow = False
        self._timer: Timer | None = None
        self._error: str | None = None  # the failure shown, told once

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        with Vertical():
            yield DataTable(id="positions", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="orders"):
                yield DataTable(id="pending", cursor_type="row")
                yield DataTable(id="fills", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#positions", DataTable).border_title = "positions"
        self.query_one("#pending", DataTable).border_title = "pending orders"
        self.query_one("#fills", DataTable).border_title = "recent fills"
        self.narrow = self.size.width < WIDE
        self.set_class(self.narrow, "-narrow")
        if self.station.facade is None:
            self.query_one("#summary", Static).update(
                "the store is not available: the paper book is read through it"
            )
            return
        self.query_one("#summary", Static).loading = True
        self._timer = self.set_interval(REFRESH_S, self.action_refresh)
        self.action_refresh()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def on_screen_resume(self) -> None:
        if self._timer is not None:
            self._timer.resume()
            self.action_refresh()

    def on_resize(self, event: Resize) -> None:
        narrow = event.size.width < WIDE
        if narrow != self.narrow:
            self.narrow = narrow
            self.set_class(narrow, "-narrow")
            self._draw()

    # --- reading the book -----------------------------------------------------------------

    def action_refresh(self) -> None:
        if self.station.facade is not None:
            self._read(self.account)

    def action_account(self) -> None:
        self.chosen = True
        self.account = ACCOUNTS[(ACCOUNTS.index(self.account) + 1) % len(ACCOUNTS)]
        self.book = None
        self.query_one("#summary", Static).loading = True
        self.action_refresh()

    @work(group="paper", exclusive=True)
    async def _read(self, account: str) -> None:
        summary = self.query_one("#summary", Static)
        try:
            book = await self._book(account)
        except Exception as exc:  # noqa: BLE001 - any failure is shown, the screen stays
            text = error_text(exc)
            summary.loading = False
            summary.update(Text(f"paper account {account}: {text}", style="red"))
            if text != self._error:  # once, not at every refresh while it lasts
                self.notify(text, severity="error")
            self._error, self.book = text, None
            return
        if account != self.account:
            return  # the user switched meanwhile: the next read draws the new one
        self._error, self.chosen, self.account = None, True, book.account
        summary.loading = False
        changed = self.book is None or book != self.book
        self.book = book
        if changed:
            self._draw()

    async def _book(self, account: str) -> PaperBook:
        """The account's book; at first, when the live account never traded, the replay's
        (a replay's paper trades are what there is to see)."""
        from engine.service.paper import PaperRequest

        book: PaperBook = await self.station.call(
            "paper", PaperRequest(account=account, fills=FILLS)
        )
        if not (book.stored or self.chosen) and account == "live":
            replay: PaperBook = await self.station.call(
                "paper", PaperRequest(account="replay", fills=FILLS)
            )
            if replay.stored:
                return replay
        return book

    @on(messages.ClockChanged)
    def _clock(self) -> None:
        self._draw()

    # --- drawing --------------------------------------------------------------------------

    def _draw(self) -> None:
        book = self.book
        if book is None:
            return
        self._summary(book)
        self._positions(book)
        self._pending(book)
        self._fills(book)

    def _summary(self, book: PaperBook) -> None:
        utc = self.station.utc
        updated = (
            f"saved {fmt_time(book.updated_at, utc=utc, fmt='%m-%d %H:%M:%S')}"
            if book.updated_at
            else "never traded"
        )
        text = Text.assemble(
            ("paper ", "bold"),
            (book.account, "bold reverse"),
            f"  {updated} · fee {book.config.get('fee', 0) * 100:.3g}% · `a` live/replay\n",
            "cash ",
            (fmt_krw(book.cash), "bold"),
            "  equity ",
            (fmt_krw(book.equity), "bold"),
            "  return ",
            _signed(book.return_pct, fmt_pct(book.return_pct / 100.0)),
            f"  of {fmt_krw(book.initial_cash)}\n",
            "realised ",
            _signed(book.realised_pnl, fmt_krw(book.realised_pnl, signed=True)),
            "  unrealised ",
            _signed(book.unrealised_pnl, fmt_krw(book.unrealised_pnl, signed=True)),
            f"  · {len(book.positions)} open · {len(book.pending)} pending",
        )
        self.query_one("#summary", Static).update(text)

    def _positions(self, book: PaperBook) -> None:
        table = self.query_one("#positions", DataTable)
        wide = not self.narrow
        columns = ["market", "units", *(["entry", "since"] if wide else [])]
        columns += ["last", "value", "PnL", "PnL %"]
        table.clear(columns=True)
        for name in columns:
            table.add_column(name, key=name)
        utc = self.station.utc
        for p in book.positions:
            pct = p.unrealised_pnl / p.cost if p.cost else 0.0
            cells: list[Any] = [p.market, _units(p.units)]
            if wide:
                cells += [fmt_price(p.entry_price), fmt_time(p.entry_ts, utc=utc)]
            cells += [
                fmt_price(p.last_price),
                fmt_krw(p.value),
                _signed(p.unrealised_pnl, fmt_krw(p.unrealised_pnl, signed=True)),
                _signed(pct, fmt_pct(pct)),
            ]
            table.add_row(*cells, key=p.market)
        table.border_subtitle = "" if book.positions else "no open position"

    def _pending(self, book: PaperBook) -> None:
        self.set_class(bool(book.pending), "-has-pending")
        table = self.query_one("#pending", DataTable)
        table.clear(columns=True)
        # fixed widths: rows added while the table is still hidden are not measured
        for name, width in (("market", 10), ("side", 4), ("decided", 11), ("cap", 12)):
            table.add_column(name, key=name, width=width)
        utc = self.station.utc
        for order in book.pending:
            cap = "all cash" if order.max_position is None else fmt_krw(order.max_position)
            table.add_row(
                order.market,
                order.side,
                fmt_time(order.ts, utc=utc),
                cap if order.side == "buy" else "-",
                key=str(order.id),
            )

    def _fills(self, book: PaperBook) -> None:
        table = self.query_one("#fills", DataTable)
        wide = not self.narrow
        columns = ["time", "market", "side", "price", "units", "value", *(["fee"] if wide else [])]
        table.clear(columns=True)
        for name in columns:
            table.add_column(name, key=name)
        utc = self.station.utc
        for fill in book.fills:  # oldest first: the newest at the bottom, as every log here
            style = "green" if fill.side == "buy" else "red"
            cells: list[Any] = [
                fmt_time(fill.ts, utc=utc),
                fill.market,
                Text(fill.side, style=style),
                fmt_price(fill.price),
                _units(fill.units),
                fmt_krw(fill.value),
            ]
            if wide:
                cells.append(fmt_krw(fill.fee))
            table.add_row(*cells, key=str(fill.id))
        if table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)
        table.border_subtitle = "" if book.fills else "no fill yet"
