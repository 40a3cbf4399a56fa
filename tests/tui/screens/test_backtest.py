"""The Backtest screen on the frozen store: a rule and a model backtested through the real
Workstation, their equity plotted (the plot got the operation's series), metrics and trades
shown; form errors and refused backtests shown, never raised; snapshots at 80x24 and 160x48."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from engine.service.evaluation import EQUITY_POINTS, BacktestRequest, equity_curves
from engine.trading.spec import StrategySpec
from tests.tui.screens.conftest import MARKET, settle
from tui.fmt import fmt_price, fmt_time
from tui.screens.backtest import BacktestScreen, read_fee, read_time
from tui.widgets.equity_plot import EquityPlot


def _cells(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def _run(pilot: Pilot, **fields: str) -> BacktestScreen:
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, BacktestScreen)
    for ident, value in fields.items():
        screen.query_one(f"#bt-{ident}", Input).value = value
    await pilot.press("ctrl+r")
    await settle(pilot)
    return screen


async def test_a_rule_backtest_draws_its_equity_metrics_and_trades(frozen_app, frozen_ws):
    app = frozen_app(start="backtest")
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _run(pilot, **{"from": "2025-10-03 09:00"})  # KST: 00:00 UTC
        start = datetime(2025, 10, 3, 0, 0, tzinfo=UTC)
        answer = frozen_ws.backtest(
            BacktestRequest(market=MARKET, unit="1", start=start, equity=True)
        )
        assert screen.result == answer and screen.request.start == start
        plot = screen.query_one(EquityPlot)
        assert plot.ts == answer.equity.ts and len(plot.ts) == answer.candles
        strategy = next(iter(answer.results))
        assert plot.series == {
            strategy: answer.equity.values[strategy],
            "buy-and-hold": answer.equity.values["buy-and-hold"],
        }
        metrics = _cells(screen.query_one("#bt-metrics", DataTable))
        total = answer.results[strategy]["total_return"]
        assert metrics[0] == [
            "return",
            f"{total:+.2%}",
            f"{answer.results['buy-and-hold']['total_return']:+.2%}",
            "+0.00%",
        ]
        assert metrics[4][:2] == ["trades", f"{answer.results[strategy]['trades']:,.0f}"]
        trades = _cells(screen.query_one("#bt-trades", DataTable))
        first = answer.trades[strategy][0]
        assert len(trades) == len(answer.trades[strategy]) > 0
        assert trades[0][0] == fmt_time(first.entry_ts)  # KST
        assert trades[0][1] == fmt_price(first.entry_price)
        assert trades[0][5] == f"{first.return_:+.2%}"
        status = str(screen.query_one("#bt-status", Static).render())
        assert "KRW-BTC 1m" in status and "fee 0.050%/side" in status and "KST" in status


async def test_a_model_backtest_from_the_form_and_a_refusal_shown(frozen_app, frozen_ws):
    app = frozen_app(start="backtest")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _run(pilot, what="xgboost-KRW-BTC-1@champion")
        answer = frozen_ws.backtest(
            BacktestRequest(model="xgboost-KRW-BTC-1@champion", market=MARKET, equity=True)
        )
        assert screen.result == answer
        assert screen.query_one(EquityPlot).series[next(iter(answer.results))]
        # narrow: the strategy beside buy-and-hold only
        assert len(screen.query_one("#bt-metrics", DataTable).columns) == 3
        await _run(pilot, what="nosuchmodel@3")
        status = str(screen.query_one("#bt-status", Static).render())
        assert "nosuchmodel" in status and screen.result == answer  # the last answer stays
        await _run(pilot, what="sma-cross", fee="lots")
        status = str(screen.query_one("#bt-status", Static).render())
        assert "fee 'lots'" in status and "0.05%" in status


async def test_a_strategy_spec_file_backtests_and_u_rewrites_the_times_in_utc(
    frozen_app, frozen_ws, tmp_path
):
    spec = tmp_path / "fast.toml"
    spec.write_text(
        'name = "fast"\nform = "rule"\n\n[[rules]]\nrule = "sma-cross"\nfast = 3\nslow = 8\n'
    )
    app = frozen_app(start="backtest")
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _run(pilot, what=str(spec), market="KRW-ETH", fee="0.1%")
        assert screen.request.strategy_spec == StrategySpec.load(spec).to_dict()
        assert screen.request.fee == pytest.approx(0.001)
        answer = frozen_ws.backtest(screen.request)
        assert screen.result == answer and answer.strategy_spec == "fast"
        assert answer.market == "KRW-ETH"
        trades = screen.query_one("#bt-trades", DataTable)
        first = answer.trades[next(iter(answer.results))][0]
        assert str(trades.get_row_at(0)[0]) == fmt_time(first.entry_ts)
        screen.query_one(DataTable).focus()
        await pilot.press("u")
        await settle(pilot)
        assert str(trades.get_row_at(0)[0]) == fmt_time(first.entry_ts, utc=True)
        assert "UTC" in str(screen.query_one("#bt-status", Static).render())
        assert screen.query_one(EquityPlot).utc


def test_form_fields_read_kst_or_utc_and_fees_as_fraction_or_percent():
    kst = read_time("2025-10-03 09:00", utc=False, name="from")
    assert kst == datetime(2025, 10, 3, 0, 0, tzinfo=UTC)
    assert read_time("2025-10-03 09:00", utc=True, name="from") == datetime(
        2025, 10, 3, 9, 0, tzinfo=UTC
    )
    assert read_time(" ", utc=False, name="to") is None
    assert read_fee("0.05%") == pytest.approx(0.0005) and read_fee("0.001") == 0.001
    with pytest.raises(ValueError, match="not a time"):
        read_time("yesterday-ish", utc=False, name="from")


def test_equity_curves_are_downsampled_with_first_and_last_kept(frozen_ws):
    from engine.trading.backtest import run_backtest

    report = run_backtest(frozen_ws.con(), "sma-cross", market=MARKET, unit="1")
    curves = equity_curves(report, points=500)
    full = next(iter(report.results.values())).equity
    assert curves.candles == len(full) == 2000 and len(curves.ts) == 500
    assert curves.ts[0] == full.index[0] and curves.ts[-1] == full.index[-1]
    assert list(curves.values) == list(report.results)
    assert next(iter(curves.values.values()))[-1] == pytest.approx(full.iloc[-1])
    assert len(equity_curves(report).ts) == min(EQUITY_POINTS, 2000)


def test_backtest_screen_snapshot_80x24(frozen_app, snap_compare):
    async def run(pilot: Pilot) -> None:
        await _run(pilot)
        await pilot.press("ctrl+t")  # the trades focused: no blinking cursor in the form
        await pilot.pause()

    assert snap_compare(frozen_app(start="backtest"), terminal_size=(80, 24), run_before=run)


def test_backtest_screen_snapshot_160x48(frozen_app, snap_compare):
    async def run(pilot: Pilot) -> None:
        await _run(pilot, what="xgboost-KRW-BTC-1@champion")
        await pilot.press("ctrl+t")
        await pilot.pause()

    assert snap_compare(frozen_app(start="backtest"), terminal_size=(160, 48), run_before=run)


async def test_number_keys_switch_screens_from_the_backtest_screen(frozen_app):
    """The form does not take the focus when the screen is shown: a number key switches
    screens (typed into a field it would not), ctrl+f goes to the form."""
    app = frozen_app(start="backtest")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.current_mode == "backtest"
        assert not isinstance(app.focused, Input)
        await pilot.press("ctrl+f")
        assert isinstance(app.focused, Input)
        await pilot.press("ctrl+t", "1")
        await pilot.pause()
        assert app.current_mode == "markets"
