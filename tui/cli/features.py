"""`upquant features build|list`: feature files from stored candles, and what each feature needs."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, MarketArg, UnitOpt, check, connect
from tui.cli.render import console, emit_json, err

if TYPE_CHECKING:
    from engine.research.features import FeatureSpec

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


def _spec(path: Path | None) -> FeatureSpec:
    from engine.research.features import DEFAULT_SPEC, load_feature_spec

    return load_feature_spec(path) if path is not None else DEFAULT_SPEC


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
    from engine.research.dataset import build_feature_file

    unit = check(market, unit)
    feature_spec = _spec(spec)
    with connect() as con, _busy(f"computing features of {market} {unit}…"):
        report = build_feature_file(con, market, unit, feature_spec, out)
    if as_json:
        emit_json(
            {
                "path": str(report.path),
                "market": market,
                "unit": unit,
                "rows": report.rows,
                "columns": report.columns,
                "dropped": report.dropped,
                "spec_hash": report.spec_hash,
                "first": report.first.isoformat() if report.first is not None else None,
                "last": report.last.isoformat() if report.last is not None else None,
                "seconds": report.seconds,
            }
        )
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
    from engine.research.dataset import stored_warmup
    from engine.research.features import FEATURE_KINDS, describe_spec

    feature_spec = _spec(spec)
    measured: dict[str, int] = {}
    if market is not None:
        unit = check(market, unit)
        with connect() as con, _busy(f"measuring warm-up on {market} {unit}…"):
            measured = stored_warmup(con, market, unit, feature_spec)
    rows = describe_spec(feature_spec)
    if as_json:
        emit_json(
            {
                "kinds": [
                    {"kind": k.name, "group": k.group, "params": k.defaults, "doc": k.doc}
                    for k in FEATURE_KINDS.values()
                ],
                "spec": {
                    **feature_spec.to_dict(),
                    "hash": feature_spec.hash(),
                    "warmup": feature_spec.warmup(),
                    "window": feature_spec.window(),
                },
                "columns": [
                    {**r, **({"measured": measured[r["column"]]} if measured else {})} for r in rows
                ],
            }
        )
        return
    kinds = Table("kind", "group", "parameters (defaults)", "what", title="feature kinds")
    for kind in FEATURE_KINDS.values():
        params = ", ".join(f"{k}={v}" for k, v in kind.defaults.items()) or "-"
        kinds.add_row(kind.name, kind.group, params, kind.doc)
    console.print(kinds)
    title = (
        f"spec {feature_spec.hash()}: {len(rows)} columns, warm-up {feature_spec.warmup()},"
        f" live window {feature_spec.window()} candles, max_gap {feature_spec.max_gap},"
        f" talib {feature_spec.talib}"
    )
    headers = ["column", "kind", "warm-up", "memory"]
    if measured:
        headers.append(f"measured ({market} {unit})")
    columns = Table(*headers, title=title)
    for r in rows:
        cells = [r["column"], r["kind"], str(r["warmup"]), str(r["memory"])]
        if measured:
            cells.append(str(measured[r["column"]]))
        columns.add_row(*cells)
    console.print(columns)
    console.print(
        "warm-up: rows before a column is defined · memory: trailing candles its value depends"
        " on to 1e-9 relative (recursive indicators: until the start of history stops"
        " mattering) · a column is kept from row max(warm-up, memory - 1), the spec's warm-up"
        + (" · measured: the same, measured by cutting history" if measured else "")
    )
