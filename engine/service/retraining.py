"""Workstation operations on retraining (on request, on a schedule, on drift) and online
updates; each registers a challenger, never a champion (issue 11 items 5 and 6).

A retrain clones the champion's training run configuration (kind, feature and label spec,
split spec with its purge and embargo, parameters, search trials; from the model's record
when no run was recorded) and trains it as a normal training job (worker process, progress,
cancel, `upquant server status`) on the newest stored candles: as many as the champion's run
learned from, ending at the newest candle, split by the same rules. Its model is the next
version of the champion's name and takes the `challenger` alias with who asked (`user`,
`schedule`, `drift`) and why in the alias history (`engine.training.train.register`); the
promotion gate decides the rest. At most one retrain of a model runs at a time. A failed
retrain changes nothing served: the run reads `failed` with its error (`train_status`,
`model_retrains`).

`Workstation.retrain(market, unit, by=..., reason=...)` is what the drift detector's glue and
the scheduler call: it answers `RetrainStarted` or `RetrainRefused` and never raises for a
refusal; the `model_retrain` operation (by the user) turns a refusal into its error.
`RetrainScheduler` runs inside `upquant serve` and starts the retrains the market/units'
`OpsSettings.schedule` make due. `model_online_update` is `engine.training.online`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import Conflict, Request, Response, ServiceError, operation
from engine.service.registry import ModelRef, resolve

if TYPE_CHECKING:
    import duckdb

    from engine.service.jobs import JobManager
    from store.registry import ModelRecord

log = logging.getLogger("engine.server.retrain")

RETRAINERS = ("user", "schedule", "drift")  # who may start a retrain (`by`)
Retrainer = Literal["user", "schedule", "drift"]
RunStatus = Literal["queued", "running", "finished", "failed", "interrupted"]


# --- answers ------------------------------------------------------------------------------------
class RetrainStarted(Response):
    """A retrain started as a training job: follow it at `status_url`."""

    run: int
    status: RunStatus
    status_url: str
    market: str
    unit: str
    champion: str = Field(description="The champion whose configuration is retrained.")
    champion_id: int
    by: Retrainer
    reason: str
    candles: int | None = Field(
        description="It learns from the newest this many stored candles (null: all of them)."
    )
    source: str = Field(description="Where its configuration came from: `run N` or `record`.")


class RetrainRefused(BaseModel):
    """Why no retrain started: `no-champion`, `running` (one of this champion runs: `run`),
    `refused` (its configuration cannot be trained), `failed` (its run `run` failed at its
    start, e.g. no candles)."""

    market: str
    unit: str
    code: Literal["no-champion", "running", "refused", "failed"]
    message: str
    hint: str | None = None
    run: int | None = None


class RetrainRequest(Request):
    market: str = Field(description="Market, e.g. KRW-BTC: its champion is retrained.")
    unit: str = "1"
    reason: str | None = Field(None, max_length=500, description="Why, kept in the history.")


class RetrainListRequest(Request):
    market: str = Field(description="Market, e.g. KRW-BTC.")
    unit: str = "1"
    limit: int = Field(20, ge=1, le=1000, description="At most this many, newest first.")


class RetrainInfo(BaseModel):
    run: int
    status: RunStatus
    by: str
    reason: str | None
    at: datetime | None = Field(description="When it was asked for (the scheduler's clock).")
    started: datetime | None
    finished: datetime | None
    error: str | None
    champion: str | None = Field(description="The champion it retrained.")
    model: str | None = Field(description="The challenger it registered (finished runs).")
    model_id: int | None


class RetrainList(Response):
    """The retrains of a market/unit, newest first."""

    market: str
    unit: str
    items: list[RetrainInfo]


class OnlineUpdateRequest(Request):
    model: str = ModelRef
    rounds: int | None = Field(
        None, ge=1, le=1000, description="XGBoost: new boosting rounds (default 20)."
    )
    epochs: int | None = Field(
        None, ge=1, le=100, description="Torch: fine-tuning epochs at lr/10 (default 2)."
    )
    after: Literal["validation", "test"] = Field(
        "validation",
        description="Learn from rows after its validation period (its test part too: the"
        " child is judged live) or only after its test part (kept held out).",
    )
    until: datetime | None = Field(
        None, description="Use only candles before this time (UTC when it names no zone)."
    )
    reason: str | None = Field(None, max_length=500, description="Why, kept in the history.")


class OnlineUpdated(Response):
    """The child version, registered as a challenger of its market/unit."""

    model: str
    id: int
    kind: str
    market: str
    unit: str
    parent: str
    parent_id: int
    rows: int = Field(description="Resolved rows it learned from.")
    update_from: datetime
    update_to: datetime
    after: str
    rounds: int | None
    epochs: int | None
    aliases: list[str]


# --- what a retrain clones ----------------------------------------------------------------------
def run_config(
    con: duckdb.DuckDBPyConnection, record: ModelRecord
) -> tuple[dict[str, Any] | None, str]:
    """The recorded settings of the run that trained `record` (or, for an online update, its
    parent's: followed up `parent_id`), and which run; (None, "record") when none was kept."""
    from store.registry import get_model

    current: ModelRecord | None = record
    seen: set[int] = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        rows = con.execute(
            "SELECT id, config FROM training_runs WHERE model_id = ? AND config IS NOT NULL"
            " ORDER BY id DESC LIMIT 1",
            [current.id],
        ).fetchall()
        if rows:
            return json.loads(rows[0][1]), f"run {rows[0][0]}"
        try:
            current = get_model(con, current.parent_id) if current.parent_id else None
        except KeyError:  # the parent was deleted
            current = None
    return None, "record"


def clone_settings(
    con: duckdb.DuckDBPyConnection, record: ModelRecord
) -> tuple[dict[str, Any], str]:
    """`prepare_run`'s arguments for a retrain of `record` on the newest candles, and where
    they came from. The run learns from as many candles as the one that trained `record`
    (the newest ones; all stored ones when that is unknown)."""
    from engine.research.features import FeatureSpec
    from engine.research.labels import LabelSpec
    from engine.research.splits import SplitSpec
    from engine.training.ensembles import model_params
    from engine.training.fit import TrainingError

    config, source = run_config(con, record)
    if config is not None:
        settings: dict[str, Any] = {
            "kind": config["kind"],
            "feature_spec": FeatureSpec.from_dict(config["feature_spec"]),
            "label_spec": LabelSpec.from_dict(config["label_spec"]),
            "split_spec": SplitSpec.from_dict(config["split_spec"]),
            **{
                k: config[k]
                for k in (
                    "params",
                    "members",
                    "method",
                    "stack_folds",
                    "trials",
                    "timeout",
                    "n_jobs",
                    "tune_folds",
                    "threshold",
                    "fee",
                )
                if k in config
            },
        }
        until = config.get("until")
        count = None
        if until:
            count = int(
                con.execute(
                    "SELECT count(*) FROM candles WHERE market = ? AND unit = ? AND ts < ?",
                    [config["market"], config["unit"], datetime.fromisoformat(until)],
                ).fetchall()[0][0]
            )
            if config.get("last"):
                count = min(count, int(config["last"]))
        settings["last"] = count or None
    else:
        if record.kind == "ensemble":
            raise TrainingError(
                f"{record.ref} is an ensemble with no recorded training run to clone",
                "train a new ensemble of its members with `upquant train ensemble`",
            )
        split = record.params.get("split")
        settings = {
            "kind": record.kind,
            "feature_spec": FeatureSpec.from_dict(record.feature_spec),
            "label_spec": LabelSpec.from_dict(record.label_spec),
            "split_spec": SplitSpec.from_dict(split) if split else SplitSpec(),
            "params": model_params(record),
        }
    settings.update(market=record.market, unit=record.unit, name=record.name, promote=False)
    return settings, source


# --- the operations -----------------------------------------------------------------------------
class RetrainOps(StoreHolder):
    # one retrain decision at a time: the check that none runs and the start go together
    _retraining = threading.Lock()

    if TYPE_CHECKING:

        @property
        def jobs(self) -> JobManager: ...

    def retrain(
        self,
        market: str,
        unit: str,
        *,
        by: str,
        reason: str | None = None,
        at: datetime | None = None,
    ) -> RetrainStarted | RetrainRefused:
        """Start a retrain of the champion of `market`/`unit` (see the module docstring), by
        `by` (user, schedule or drift) for `reason`; `at`: when it was asked for (the
        scheduler's clock; now by default). A refusal is answered, not raised."""
        from engine.training.fit import TrainingError
        from engine.upbit.markets import check_market, check_unit
        from store.registry import champion

        if by not in RETRAINERS:
            raise ValueError(f"a retrain is started by {', '.join(RETRAINERS)}, not {by!r}")
        market, unit = check_market(market), check_unit(unit)
        reason = reason or ("retrain requested" if by == "user" else f"{by} retrain")
        con = self.con()

        def refused(code: Any, message: str, hint: str | None, run: int | None = None) -> Any:
            return RetrainRefused(
                market=market, unit=unit, code=code, message=message, hint=hint, run=run
            )

        with self._retraining:
            record = champion(con, market, unit)
            if record is None:
                return refused(
                    "no-champion",
                    f"{market} unit {unit} has no champion to retrain",
                    f"train one (`upquant train xgboost {market} --unit {unit}`) or promote"
                    " one (`upquant models promote MODEL`)",
                )
            running = self._running_retrain(record.id)
            if running is not None:
                run_id, state = running
                return refused(
                    "running",
                    f"a retrain of {record.ref} is already {state}: run {run_id}",
                    f"wait for it (GET /api/v1/training-runs/{run_id}) or cancel it"
                    f" (DELETE /api/v1/training-runs/{run_id})",
                    run_id,
                )
            try:
                settings, source = clone_settings(con, record)
                settings["retrain"] = {
                    "by": by,
                    "reason": reason,
                    "of": record.id,
                    "of_ref": record.ref,
                    "at": (at or datetime.now(UTC)).isoformat(),
                }
                run_id, config = self.jobs.prepare(settings)
            except (TrainingError, ValueError, KeyError, TypeError) as exc:
                return refused(
                    "refused",
                    f"{record.ref}'s configuration cannot be retrained: {exc}",
                    getattr(exc, "hint", None) or "train a new model of its market/unit",
                )
            try:
                self.jobs.enqueue(run_id, config)
            except Exception as exc:  # noqa: BLE001  the run is recorded failed, with why
                return refused(
                    "failed",
                    f"retrain run {run_id} of {record.ref} failed to start: {exc}",
                    getattr(exc, "hint", None) or str(exc),
                    run_id,
                )
        status = self.jobs.status(run_id) or "running"
        log.info("retrain of %s started: run %d (by %s: %s)", record.ref, run_id, by, reason)
        return RetrainStarted(
            run=run_id,
            status=status,  # type: ignore[arg-type]
            status_url=f"/api/v1/training-runs/{run_id}",
            market=market,
            unit=unit,
            champion=record.ref,
            champion_id=record.id,
            by=by,  # type: ignore[arg-type]
            reason=reason,
            candles=config.get("last"),
            source=source,
        )

    def _running_retrain(self, model_id: int) -> tuple[int, str] | None:
        """The queued or running retrain of model `model_id` (run, status), if any; a run
        whose owner is gone reads interrupted (and does not count)."""
        from store.registry import get_run

        rows = (
            self.con()
            .execute(
                "SELECT id FROM training_runs WHERE status IN ('queued', 'running')"
                " AND json_extract_string(config, '$.retrain.of') = ? ORDER BY id",
                [str(model_id)],
            )
            .fetchall()
        )
        for (run_id,) in rows:
            run = get_run(self.con(), int(run_id))
            if run.status in ("queued", "running"):
                return run.id, run.status
        return None

    @operation("write")
    def model_retrain(self, request: RetrainRequest) -> RetrainStarted:
        """Retrain the champion of a market/unit on the newest candles as a job; its model
        becomes a challenger (never the champion: the promotion gate decides)."""
        result = self.retrain(request.market, request.unit, by="user", reason=request.reason)
        if isinstance(result, RetrainRefused):
            error = Conflict if result.code in ("no-champion", "running") else ServiceError
            raise error(result.message, result.hint)
        return result

    @operation("read")
    def model_retrains(self, request: RetrainListRequest) -> RetrainList:
        """The retrains of a market/unit, newest first: who asked, why, how each ended."""
        from engine.upbit.markets import check_market, check_unit
        from store.registry import get_model, get_run

        market, unit = check_market(request.market), check_unit(request.unit)
        con = self.con()
        ids = con.execute(
            "SELECT id FROM training_runs WHERE market = ? AND unit = ?"
            " AND json_extract(config, '$.retrain') IS NOT NULL ORDER BY id DESC LIMIT ?",
            [market, unit, request.limit],
        ).fetchall()
        items = []
        for (run_id,) in ids:
            run = get_run(con, int(run_id))
            asked = (run.config or {}).get("retrain", {})
            model = None
            if run.model_id is not None:
                with contextlib.suppress(KeyError):
                    model = get_model(con, run.model_id)
            items.append(
                RetrainInfo(
                    run=run.id,
                    status=run.status,  # type: ignore[arg-type]
                    by=str(asked.get("by")),
                    reason=asked.get("reason"),
                    at=datetime.fromisoformat(asked["at"]) if asked.get("at") else None,
                    started=run.started,
                    finished=run.finished,
                    error=run.error,
                    champion=asked.get("of_ref"),
                    model=model.ref if model else None,
                    model_id=model.id if model else None,
                )
            )
        return RetrainList(market=market, unit=unit, items=items)

    @operation("write")
    def model_online_update(self, request: OnlineUpdateRequest) -> OnlineUpdated:
        """Update a model on the candles resolved after its validation period (XGBoost:
        more boosting rounds; torch: fine-tuning); the new version becomes a challenger."""
        from engine.training.fit import TrainingError
        from engine.training.online import online_update
        from store.registry import get_model, model_aliases

        con = self.con()
        parent = resolve(con, request.model)
        try:
            child = online_update(
                con,
                str(parent.id),
                rounds=request.rounds,
                epochs=request.epochs,
                after=request.after,
                until=request.until,
                by="user",
                reason=request.reason,
            )
        except TrainingError as exc:
            raise ServiceError(str(exc), exc.hint) from None
        parent = get_model(con, parent.id)
        update = child.params["online_update"]
        return OnlineUpdated(
            model=child.ref,
            id=child.id,
            kind=child.kind,
            market=child.market,
            unit=child.unit,
            parent=parent.ref,
            parent_id=parent.id,
            rows=int(update["rows"]),
            update_from=update["from"],
            update_to=update["to"],
            after=update["after"],
            rounds=update.get("rounds"),
            epochs=update.get("epochs"),
            aliases=model_aliases(con, child.id),
        )


# --- schedules ----------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)


class RetrainScheduler:
    """Starts the retrains that the market/units' schedules make due, every `every` seconds,
    on the running event loop (the store work on a thread, never on the loop).

    A market/unit with `OpsSettings.schedule` set is due when its newest scheduled retrain was
    asked for more than `schedule_period` ago by `clock` (or never): a failed one counts (the
    next try waits a period), a refused one (no champion, one already running) does not (it
    is tried again next time, logged once per reason). `upquant serve` runs one from start to
    stop; a one-shot command runs none."""

    def __init__(
        self,
        ws: RetrainOps,
        *,
        every: float = 60.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, got {every}")
        self.ws, self.every, self.clock = ws, float(every), clock
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._said: dict[tuple[str, str], str] = {}

    def due(self) -> list[tuple[str, str, str]]:
        """(market, unit, schedule) of every market/unit whose scheduled retrain is due."""
        from engine.ops.settings import OpsSettings, schedule_period
        from store.ops_settings import all_settings

        con = self.ws.con()
        now = self.clock()
        out = []
        for (market, unit), stored in sorted(all_settings(con).items()):
            try:
                schedule = OpsSettings.from_dict(stored).schedule
            except (ValueError, TypeError) as exc:
                self._say(market, unit, f"ops settings of {market} unit {unit} unreadable: {exc}")
                continue
            if schedule is None:
                continue
            last = self.last_scheduled(market, unit)
            if last is None or now - last >= schedule_period(schedule):
                out.append((market, unit, schedule))
        return out

    def last_scheduled(self, market: str, unit: str) -> datetime | None:
        """When the newest scheduled retrain of market/unit was asked for (None: never)."""
        rows = (
            self.ws.con()
            .execute(
                "SELECT json_extract_string(config, '$.retrain.at') FROM training_runs"
                " WHERE market = ? AND unit = ?"
                " AND json_extract_string(config, '$.retrain.by') = 'schedule'",
                [market, unit],
            )
            .fetchall()
        )
        stamps = [datetime.fromisoformat(at) for (at,) in rows if at]
        return max(stamps) if stamps else None

    def tick(self) -> list[RetrainStarted | RetrainRefused]:
        """One look: a retrain started for each due market/unit (blocking: store and job)."""
        out: list[RetrainStarted | RetrainRefused] = []
        for market, unit, schedule in self.due():
            try:
                result = self.ws.retrain(
                    market, unit, by="schedule", reason=f"schedule {schedule}", at=self.clock()
                )
            except (ValueError, KeyError) as exc:  # a bad row: the other market/units go on
                self._say(market, unit, f"scheduled retrain of {market} unit {unit}: {exc}")
                continue
            if isinstance(result, RetrainRefused):
                self._say(market, unit, f"scheduled retrain refused: {result.message}")
            else:
                self._said.pop((market, unit), None)
            out.append(result)
        return out

    def _say(self, market: str, unit: str, text: str) -> None:
        if self._said.get((market, unit)) != text:  # once per reason, not every minute
            self._said[(market, unit)] = text
            log.warning("%s", text)

    def start(self) -> None:
        """Run on the current event loop until `stop`."""
        if self._task is None or self._task.done():
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._stop))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await loop.run_in_executor(None, self.tick)
            except Exception:  # a failed look is logged; the next one comes
                log.exception("the retrain scheduler's look failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    async def stop(self) -> None:
        """Stop looking; a look in progress finishes first (its retrain started or not)."""
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            await task
