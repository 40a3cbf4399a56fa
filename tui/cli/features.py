"""`upquant features build|list`: feature files from stored candles, and what each feature needs.

Both are Workstation operations (engine/service/features.py): the spec file and the output
file travel as absolute paths; the command renders the answer."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, MarketArg, UnitOpt, check, workstation
from tui.cli.render import console, emit_json, err

features_app = typer.Typer(help="Feature specs and feature files.", no_args_is_help=True)

SpecOpt = Annotated[
    Path | None,
    typer.Option(
        "--spec",
        help="Feature spec JSON file ({'features': [...], 'talib': ..., 'max_gap': ...});"
        " default: the built-in default spec.",
    ),
]


def _busy(text: str) -> AbstractContextManager[object]:
    """A spinner on stderr while the engine works (nothing when stderr is not a terminal)."""
    return err.status(text, spinner="dots") if err.is_terminal else nullcontext()


def _spec_file(path: Path | None) -> str | None:
    """The spec file as the operation takes it: absolute (it may run in a server)."""
    return str(path.expanduser().absolute()) if path is not None else None


@features_app.command("build")
def features_build(
    market: MarketArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Parquet file to write, e.g. btc.parquet.")
    ],
    unit: UnitOpt = "1",
    spec: SpecOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compute features of the stored candles of MARKET and write them to a Parquet file."""
    from engine.service.features import FeaturesBuildRequest

    unit = check(market, unit)
    request = FeaturesBuildRequest(
        market=market, unit=unit, out=str(out.expanduser().absolute()), spec_file=_spec_file(spec)
    )
    with workstation() as ws, _busy(f"computing features of {market} {unit}…"):
        report = ws.features_build(request)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    span = (
        f" from {report.first:%Y-%m-%d %H:%M} to {report.last:%Y-%m-%d %H:%M} UTC"
        if report.first is not None and report.last is not None
        else ""
    )
    console.print(
        f"{report.path}: {report.rows:,} rows x {report.columns} features{span}"
        f" ({report.dropped:,} warm-up/gap rows left out) · spec {report.spec_hash}"
        f" · computed in {report.seconds:.2f}s"
    )


@features_app.command("list")
def features_list(
    spec: SpecOpt = None,
    market: Annotated[
        str | None,
        typer.Option(
            "--market",
            "-m",
            help="Also measure each column's warm-up on this market's stored candles.",
        ),
    ] = None,
    unit: UnitOpt = "1",
    as_json: JsonOpt = False,
) -> None:
    """Every feature kind with its parameters, then the spec's columns with their warm-up."""
    from engine.service.features import FeaturesListRequest

    if market is not None:
        unit = check(market, unit)
    request = FeaturesListRequest(market=market, unit=unit, spec_file=_spec_file(spec))
    busy = _busy(f"measuring warm-up on {market} {unit}…") if market else nullcontext()
    with workstation() as ws, busy:
        listing = ws.features_list(request)
    measured = market is not None
    if as_json:
        payload = listing.model_dump(mode="json")
        if not measured:  # a column says `measured` only when it was
            for column in payload["columns"]:
                del column["measured"]
        emit_json(payload)
        return
    kinds = Table("kind", "group", "parameters (defaults)", "what", title="feature kinds")
    for kind in listing.kinds:
        params = ", ".join(f"{k}={v}" for k, v in kind.params.items()) or "-"
        kinds.add_row(kind.kind, kind.group, params, kind.doc)
    console.print(kinds)
    spec_info = listing.spec
    title = (
        f"spec {spec_info.hash}: {len(listing.columns)} columns, warm-up {spec_info.warmup},"
        f" live window {spec_info.window} candles, max_gap {spec_info.max_gap},"
        f" talib {spec_info.talib}"
    )
    headers = ["column", "kind", "warm-up", "memory"]
    if measured:
        headers.append(f"measured ({market} {unit})")
    columns = Table(*headers, title=title)
    for r in listing.columns:
        cells = [r.column, r.kind, str(r.warmup), str(r.memory)]
        if measured:
            cells.append(str(r.measured))
        columns.add_row(*cells)
    console.print(columns)
    console.print(
        "warm-up: rows before a column is defined · memory: trailing candles its value depends"
        " on to 1e-9 relative (recursive indicators: until the start of history stops"
        " mattering) · a column is kept from row max(warm-up, memory - 1), the spec's warm-up"
        + (" · measured: the same, measured by cutting history" if measured else "")
    )
