"""`upquant store ...`: the store's own upkeep (check, and fix what crashes left behind), as
the Workstation operations `store_check` and `store_fix` (engine/service/upkeep.py), and
`keygen`, a new artifact encryption key, made here (a key never travels to a server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, workstation
from tui.cli.render import CliError, console, emit_json, err, styled

store_app = typer.Typer(
    help="The store under $UPQUANT_HOME: check and repair.", no_args_is_help=True
)


def _size(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size:,} B"


@store_app.command("check")
def store_check(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Remove what is left behind, make files private and compact a grown database"
            " file (keeping a backup until the copy is verified).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check every model's artifact (ok, missing, damaged) and find what crashes left behind:
    unused artifacts, .part files, stale cache entries, checkpoints of finished runs, files
    others may read, a database file grown with free space. Exit 1 while problems remain."""
    from engine.service.upkeep import StoreCheckRequest

    with workstation() as ws:
        report = (ws.store_fix if fix else ws.store_check)(StoreCheckRequest())
    if as_json:
        emit_json(report.model_dump(mode="json"))
        raise typer.Exit(1 if report.problems else 0)

    console.print(styled(("store", "bold"), f" {report.home}"), highlight=False)
    bad = [a for a in report.artifacts if a.status != "ok"]
    console.print(
        f"artifacts: {len(report.artifacts) - len(bad)} of {len(report.artifacts)} ok",
        highlight=False,
    )
    for check in bad:
        console.print(
            styled(("  " + check.status.upper(), "red"), f" {check.model}: {check.detail}"),
            highlight=False,
        )
    if report.findings:
        table = Table("kind", "path", "size", "why", "state")
        for finding in report.findings:
            state = "fixed" if finding.fixed else ("kept" if not finding.fixable else "found")
            table.add_row(finding.kind, finding.path, _size(finding.size), finding.detail, state)
        console.print(table)
    db = report.database
    if db is not None:
        line = (
            f"database: file {_size(db.file_bytes)}, in use {_size(db.used_bytes)},"
            f" free {_size(db.free_bytes)}"
        )
        if db.compacted_bytes is not None:
            line += f"; compacted to {_size(db.compacted_bytes)}"
        console.print(line, highlight=False)
    if not report.problems:
        console.print("clean" if not fix else "clean (what was found is fixed)", highlight=False)
        return
    unfixed = [f for f in report.findings if not f.fixed]
    hints = []
    if any(a.status in ("missing", "damaged") for a in bad):
        hints.append("retrain or `upquant models delete` the models whose artifact is not ok")
    if any(a.status in ("wrong-key", "key-error") for a in bad):
        hints.append("set the artifact key those models were written with")
    if any(f.fixable for f in unfixed):
        hints.append("run `upquant store check --fix`")
    if any(not f.fixable and f.kind == "backup" for f in unfixed):
        hints.append("a backup that differs from the store is kept: compare, then move it")
    if any(f.kind == "key" for f in unfixed):
        hints.append("fix the artifact key setting as its finding says")
    err.print(
        styled(("problems:", "red"), f" {report.problems} remain"),
        highlight=False,
    )
    err.print(f"hint: {'; '.join(hints)}", highlight=False)
    raise typer.Exit(1)


@store_app.command("keygen")
def store_keygen(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the key to this new file, readable by you only (0600), instead of"
            " printing it; point UPQUANT_ARTIFACT_KEY_FILE at it.",
        ),
    ] = None,
) -> None:
    """Make a new random artifact key (base64 of 32 bytes, AES-256). Set it as
    UPQUANT_ARTIFACT_KEY, or in a file named by UPQUANT_ARTIFACT_KEY_FILE, in the environment
    of whatever trains and loads models (the server when one runs): models written from then
    on are encrypted at rest. Keep a copy: an artifact cannot be opened without its key."""
    from store.crypto import KEY_FILE_ENV, new_key

    key = new_key()
    if out is None:
        console.print(key, highlight=False, soft_wrap=True)
        return
    try:
        with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key + "\n")
    except FileExistsError:
        raise CliError(
            f"{out} exists; a key file is never overwritten (its models need that key)",
            "choose a new file name",
        ) from None
    except OSError as exc:
        raise CliError(
            f"cannot write the key file {out}: {exc}", "choose a writable path"
        ) from None
    console.print(
        f"key written to {out} (0600); set {KEY_FILE_ENV}={out.resolve()}", highlight=False
    )
