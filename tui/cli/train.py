"""`upquant train KIND MARKET`: headless training with progress bars and a printed report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from typer._click.exceptions import MissingParameter  # typer's own "Missing argument" error

from tui.cli.options import JsonOpt, UnitOpt, check, workstation
from tui.cli.render import console, emit_json, err, styled

if TYPE_CHECKING:
    from engine.service import Workstation
    from engine.service.training import TrainResult, TrainStartRequest
    from engine.training.fit import Progress

# how often a followed job's status is asked for
POLL_S = 0.3


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.2%}" if pct else f"{value:.4f}"


def train(
    ctx: typer.Context,
    kind: Annotated[
        str | None,
        typer.Argument(
            help="Model kind: xgboost, lstm, transformer, ensemble (with --resume: the run's).",
            show_default=False,
        ),
    ] = None,
    market: Annotated[
        str | None,
        typer.Argument(
            help="Upbit market code, e.g. KRW-BTC (with --resume: the run's).", show_default=False
        ),
    ] = None,
    unit: UnitOpt = "1",
    members: Annotated[
        list[str] | None,
        typer.Option("--members", help="Ensemble members (name, name@version or id); repeat."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="Ensemble method: vote, soft-vote, weighted, stack, blend.")
    ] = "soft-vote",
    feature_spec: Annotated[
        Path | None, typer.Option(help="Feature spec file (JSON); default spec if omitted.")
    ] = None,
    horizon: Annotated[int, typer.Option(help="Label horizon in candles.")] = 10,
    threshold: Annotated[
        float, typer.Option(help="Forward log-return beyond which a candle is buy/sell.")
    ] = 0.001,
    scheme: Annotated[
        str, typer.Option(help="Label scheme: fixed_horizon, triple_barrier, regression.")
    ] = "fixed_horizon",
    train_fraction: Annotated[
        float, typer.Option("--train", help="Training fraction of the candles, oldest first.")
    ] = 0.7,
    validation_fraction: Annotated[
        float, typer.Option("--validation", help="Validation fraction (early stopping).")
    ] = 0.15,
    embargo: Annotated[
        int,
        typer.Option(help="Rows dropped after each cut, beyond the purge of labels that cross it."),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Torch models: maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Torch models: batch size.")] = None,
    window: Annotated[int | None, typer.Option(help="Torch models: rows per window.")] = None,
    n_estimators: Annotated[
        int | None, typer.Option(help="XGBoost boosting rounds (early stopping on validation).")
    ] = None,
    trials: Annotated[int, typer.Option(help="Hyperparameter search trials (0: none).")] = 0,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting new trials after this many seconds.")
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", help="Trials run in parallel (joblib); -1: one per core.")
    ] = 1,
    tune_folds: Annotated[
        int,
        typer.Option(help="Score trials on this many (>= 2) walk-forward folds (0: validation)."),
    ] = 0,
    name: Annotated[
        str | None, typer.Option(help="Registry name (default KIND-MARKET-UNIT).")
    ] = None,
    resume: Annotated[
        int | None,
        typer.Option(
            "--resume",
            metavar="RUN",
            help="Continue an interrupted or failed run (Ctrl-C, killed, out of memory) with its"
            " own settings: a torch run from its last epoch's checkpoint.",
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="With --resume: run it again from its first epoch, dropping its checkpoint and"
            " epoch metrics (an xgboost run, or a damaged checkpoint).",
        ),
    ] = False,
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--no-promote", help="Make it champion (default: only if none yet)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on stored candles, evaluate it on the test part beside the baselines, register it; or continue a run that was stopped (--resume RUN)."""
    from engine.params import check_search_args
    from engine.research.features import load_feature_spec
    from engine.service.training import TrainStartRequest
    from engine.training.tuning import SPACES, describe

    if resume is not None:
        _run(
            TrainStartRequest(kind=kind, market=market, unit=unit, resume=resume, restart=restart),
            as_json,
        )
        return
    for argument, value in (("kind", kind), ("market", market)):
        if value is None:  # required unless --resume names a run
            param = next(p for p in ctx.command.params if p.name == argument)
            raise MissingParameter(ctx=ctx, param=param)
    assert kind is not None and market is not None
    unit = check(market, unit)
    # train_start checks them too; here before the search space is shown
    check_search_args(trials=trials, n_jobs=jobs, tune_folds=tune_folds, timeout=timeout)
    if trials and kind in SPACES and not as_json:
        err.print(styled(("search space", "bold"), f" ({trials} trials, {jobs} in parallel):"))
        for line in describe(SPACES[kind]):
            err.print(f"  {line}")
    spec = load_feature_spec(feature_spec).to_dict() if feature_spec else None
    _run(
        TrainStartRequest(
            kind=kind,
            market=market,
            unit=unit,
            members=members,
            method=method,
            feature_spec=spec,
            horizon=horizon,
            threshold=threshold,
            scheme=scheme,
            train=train_fraction,
            validation=validation_fraction,
            embargo=embargo,
            seed=seed,
            device=device,
            epochs=epochs,
            batch_size=batch_size,
            window=window,
            n_estimators=n_estimators,
            trials=trials,
            timeout=timeout,
            jobs=jobs,
            tune_folds=tune_folds,
            name=name,
            promote=promote,
            restart=restart,
        ),
        as_json,
    )


def _run(request: TrainStartRequest, as_json: bool) -> None:
    """Start the job, follow it to its end (drawing its progress), print its report. Without
    a server this process owns the job for its lifetime: leaving it stops the job."""
    with workstation() as ws, _progress_display(not as_json) as show:
        run = ws.train_start(request).run
        result = _follow(ws, run, show)
    _show(result, as_json)


def _follow(ws: Workstation, run: int, show: Any) -> TrainResult:
    """Poll run `run`'s status until it ends; Ctrl-C (or SIGTERM) cancels it (interrupted,
    resumable) and stops the command as before."""
    import time

    from engine.service import ServiceError
    from engine.service.training import TrainRunRequest, TrainStatusRequest
    from engine.training.fit import Progress
    from store.db import interrupted

    shown = 0
    try:
        while True:
            try:
                status = ws.train_status(TrainStatusRequest(run=run))
            except Exception as exc:
                if interrupted(exc):  # the signal arrived inside the status query
                    raise KeyboardInterrupt from exc
                raise
            if show is not None:
                for text in status.messages[shown:]:
                    show(Progress("step", 0, 0, text=text))
                for p in status.phases:  # an undefined metric (null) reads as NaN
                    metrics = {k: float("nan") if v is None else v for k, v in p.metrics.items()}
                    show(Progress(p.phase, p.done, p.total, metrics))
            shown = len(status.messages)
            if status.status == "finished" and status.result is not None:
                return status.result
            if status.status == "failed":
                raise ServiceError(status.error or f"run {run} failed", status.hint)
            if status.status == "interrupted":
                raise ServiceError(
                    f"run {run} was interrupted: {status.error}",
                    f"continue it with `upquant train --resume {run}`",
                )
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        ws.train_cancel(TrainRunRequest(run=run, reason="stopped by Ctrl-C or a signal"))
        raise


def _show(report: TrainResult, as_json: bool) -> None:
    if as_json:
        emit_json(report_json(report))
        return
    print_report(report)


class _progress_display:
    """Rich progress bars for epochs, trials and folds on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err.is_terminal
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=err,
        )
        self.bar.start()
        return self.update

    def update(self, p: Progress) -> None:
        if p.phase == "step":
            self.bar.console.print(p.text)
            return
        if p.phase not in self.tasks:
            self.tasks[p.phase] = self.bar.add_task(f"{p.phase}s", total=p.total, info="")
        info = " ".join(f"{k} {v:.4f}" for k, v in p.metrics.items())
        self.bar.update(self.tasks[p.phase], completed=p.done, total=p.total, info=info)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()


def report_json(report: TrainResult) -> dict[str, Any]:
    return report.model_dump(
        mode="json",
        include={
            "model",
            "id",
            "run",
            "status",
            "sha256",
            "rows",
            "metrics",
            "class_balance",
            "search",
        },
    )


def print_report(report: TrainResult) -> None:
    r = report.rows
    console.print(
        styled(
            (report.model, "bold"),
            f" (id {report.id}, {report.status}, run {report.run}) ·"
            f" {len(report.features)} features · rows train {r['train']:,} / validation"
            f" {r['validation']:,} / test {r['test']:,}",
        )
    )
    if report.search:
        t = report.search
        done = [x for x in t["trials"] if x.get("score") is not None]
        console.print(
            f"search: {len(done)}/{len(t['trials'])} trials, best {t['metric']}"
            f" {t['best_score']:.4f}"
        )
    if "test" in report.class_balance:
        balance = report.class_balance["test"]
        console.print(
            "test class balance: " + ", ".join(f"{k} {v:.1%}" for k, v in balance.items())
        )
    m = report.metrics
    if "baseline_majority_test" in m:
        table = Table("test part", "accuracy", "macro F1", "log-loss")
        for label, key in (
            (report.model, "test"),
            ("majority-class baseline", "baseline_majority_test"),
        ):
            table.add_row(
                label, _fmt(m[key]["accuracy"]), _fmt(m[key]["f1_macro"]), _fmt(m[key]["log_loss"])
            )
    else:
        table = Table("test part", "RMSE", "IC", "rank IC", "R²")
        for label, key in ((report.model, "test"), ("zero-return baseline", "baseline_zero_test")):
            table.add_row(
                label,
                _fmt(m[key]["rmse"]),
                _fmt(m[key]["ic"]),
                _fmt(m[key]["rank_ic"]),
                _fmt(m[key]["r2"]),
            )
    console.print(table)
    trading = Table("test part, after fees", "total return", "Sharpe", "max drawdown", "trades")
    for name, values in report.trading.items():
        label = report.model + " signals" if name == "model" else name.replace("_", "-")
        trading.add_row(
            label,
            _fmt(values.get("total_return"), pct=True),
            _fmt(values.get("sharpe")),
            f"{values.get('max_drawdown', float('nan')):.2%}",
            f"{values.get('trades', 0):,.0f}",
        )
    console.print(trading)
    console.print(
        f"artifact {report.artifact} (sha256 {report.sha256[:16]}…, {report.size:,} bytes)"
    )
