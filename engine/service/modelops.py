"""A live session's model operations: outcomes, drift, the promotion gate, guards, new seats.

The live engine (engine/live/engine.py) decides with the champion and logs every seated
model's prediction; it knows nothing of what happens to them next (engine/live never imports
engine/ops). This module joins the two for one session. After each write of the engine's log
(`LiveEngine.flushed`) a cycle runs on a worker thread, one at a time (a write during a cycle
asks for one more after it):

1. the outcomes whose label horizon has passed are resolved (`engine.ops.outcomes`);
2. the champion's newly resolved predictions feed its performance monitor (ADWIN on the 0/1
   correctness stream and on per-trade PnL, `engine.ops.monitor`); a detection is stored in
   `drift_events`, announced, and with `retrain_on_drift` starts a retrain that registers a
   challenger (by 'drift'), when the session runs inside a server that can train;
3. the promotion gate runs (`engine.ops.ab.gate_check`) once `gate_every` more outcomes
   resolved (and on the session's last cycle): with `auto_promote` a challenger whose
   evidence passes takes the champion alias (by 'gate'), otherwise it is recommended;
4. when the aliases of the market/unit moved (the gate, a user's promote or alias move, a
   retrain's new challenger) the new seats are loaded and handed to the engine, which takes
   them on its next closed candle, never in the middle of a decision;
5. every `feature_drift_every` candles the champion's feature drift (PSI, KS per feature
   against its training range) is recorded in `drift`, for display only.

The guard the engine asks before the champion decides stops an expired champion (older than
`max_age_hours`, measured at the candle decided on, so a replay judges it as live would have)
and an input outside the champion's training distribution (the dissimilarity gate): the rule
decides with that reason. Settings are read from `ops_settings` once per cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.live.seats import holder_ids, load_seats
from engine.ops.settings import OpsSettings, get_settings

if TYPE_CHECKING:
    import duckdb

    from engine.live.engine import LiveEngine
    from engine.live.inference import LoadedModel
    from engine.live.session import Session

log = logging.getLogger(__name__)

FEATURE_DRIFT_EVERY = 500  # candles between two feature drift records of the champion
# outcomes resolved between two runs of the gate: it reloads every resolved row (~1 s at
# 100k), and its verdicts only change at its checkpoints (500, 1000, 2000 ... candles)
GATE_EVERY = 50

# (market, unit, by, reason) -> what happened, in words (a run started, or why not)
type Retrain = Callable[[str, str, str, str], str]


@dataclass
class CycleReport:
    """What one cycle did (tests and the server log read it)."""

    resolved: int = 0
    drift_events: int = 0
    retrains: tuple[str, ...] = ()
    gate: tuple[str, ...] = ()  # one line per challenger the gate judged
    moved: bool = False  # the gate moved the champion alias
    reseated: bool = False
    said: list[tuple[str, str]] = field(default_factory=list)  # (text, level) to announce


class Guard:
    """The engine's guard (`engine.live.engine.Guard`): why the champion must not decide on
    this candle. Reads the settings and references the cycle prepared (a plain swap of
    references, so the loop never waits on the worker thread)."""

    def __init__(self, settings: OpsSettings) -> None:
        self.settings = settings
        self.references: dict[str, Any] = {}  # artifact sha256 -> its FeatureReference

    def __call__(self, model: LoadedModel, rows: np.ndarray, ts: pd.Timestamp) -> str | None:
        from engine.ops.monitor import expired, out_of_distribution

        settings = self.settings
        if settings.max_age_hours is not None:
            reason = expired(model.record, ts, settings.max_age_hours)
            if reason is not None:
                return reason
        if settings.ood_gate:
            reference = self.references.get(model.record.sha256)
            if reference is not None:
                return out_of_distribution(reference, rows[-1], settings.ood_max_share)
        return None


class ModelOpsCycle:
    """The model operations of one session (see the module docstring)."""

    def __init__(
        self,
        engine: LiveEngine,
        *,
        retrain: Retrain | None = None,
        feature_drift_every: int = FEATURE_DRIFT_EVERY,
        gate_every: int = GATE_EVERY,
    ) -> None:
        from engine.ops.monitor import PerformanceMonitor

        self.engine = engine
        self.market, self.unit = engine.market, engine.unit
        self.con: duckdb.DuckDBPyConnection = engine.con.cursor()  # the worker thread's
        self.retrain = retrain
        self.feature_drift_every = feature_drift_every
        self.gate_every = gate_every
        self.settings = get_settings(self.con, self.market, self.unit)
        self.guard = Guard(self.settings)
        self.monitor = PerformanceMonitor()
        self.seated = _seats_of(engine)  # the models the engine runs (loaded)
        # the alias holders they were loaded for (a bad champion artifact seats an earlier
        # model: the holders, not the loaded ids, say whether an alias moved since)
        self.holders = holder_ids(self.con, self.market, self.unit)
        self._fed: dict[int, pd.Timestamp] = {}  # per model: the newest resolved ts fed
        self._candles_at_drift = 0
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.reports: list[CycleReport] = []
        self._report = CycleReport()  # the running cycle's
        self._gate_said = ""  # the last recommendation announced
        self._stopped = False
        self._unjudged = 0  # outcomes resolved since the gate last ran
        self._final = False  # the session's last cycle: the gate runs whatever is new

    # ------------------------------------------------------------------------ attaching
    def attach(self) -> None:
        """Guard the engine's champion and run a cycle after each write of its log."""
        self.engine.guard = self.guard
        self.engine.flushed.append(self.kick)

    def prepare(self) -> None:
        """Build the champion's training reference (the dissimilarity gate's), before the
        first candle: off the loop, it reads the model's training candles."""
        self._references(self.engine.model)

    # ------------------------------------------------------------------------- running
    def kick(self) -> None:
        """Run a cycle now on a worker thread (called on the loop after a write); one
        already running runs once more when done."""
        if self.engine.mode == "demo" or self._stopped:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a flush outside the loop (the server stopping): nothing to run
            return
        self._task = loop.create_task(self._cycles(), name="upquant-model-ops")

    async def _cycles(self) -> None:
        while True:
            self._again = False
            try:
                report = await asyncio.to_thread(self.run_once)
            except Exception as exc:  # a failed cycle: said, and the next one tries
                log.exception("model operations cycle failed")
                report = CycleReport()
                report.said.append(
                    (f"model operations failed: {type(exc).__name__}: {exc}", "warning")
                )
            self._apply(report)
            if not self._again:
                return

    async def stop(self) -> None:
        """No cycle from now on: wait for the running one (a thread cannot be cut short),
        then close the cycle's cursor, before the store it reads may close."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)
        self.con.close()

    async def drain(self) -> None:
        """Wait for the running cycle (and the one it owes), then run a last one: what the
        session decided last is resolved and judged too."""
        if self._task is not None:
            await asyncio.shield(self._task)
        self._task = None
        self._final = True
        try:
            report = await asyncio.to_thread(self.run_once)
        except Exception as exc:  # the session's signals stand: its last cycle only said so
            log.exception("the last model operations cycle failed")
            report = CycleReport()
            report.said.append((f"model operations failed: {type(exc).__name__}: {exc}", "warning"))
        self._apply(report)

    def _apply(self, report: CycleReport) -> None:
        """On the loop: announce what the cycle did as the engine's status events (every
        face that follows the session shows them; a server forwards them to its clients)."""
        from engine.live.engine import StatusEvent

        self.reports.append(report)
        del self.reports[:-100]
        for text, level in report.said:
            log.info("%s", text)
            self.engine.publish(StatusEvent(text, level))

    def run_once(self) -> CycleReport:
        """One cycle (on a worker thread; see the module docstring)."""
        from engine.ops.outcomes import resolve_outcomes

        report = self._report = CycleReport()
        self.settings = get_settings(self.con, self.market, self.unit)
        self.guard.settings = self.settings
        seated = self.seated
        ids = [i for i in (seated.champion, *seated.shadows) if i is not None]
        if ids:
            report.resolved = resolve_outcomes(
                self.con, model_ids=ids, markets=[self.market]
            ).resolved
        if seated.champion is not None:
            self._monitor(seated.champion, report)
        self._gate(report)
        self._reseat(report)
        self._feature_drift()
        return report

    # --------------------------------------------------------------------------- steps
    def _monitor(self, model_id: int, report: CycleReport) -> None:
        from engine.ops.monitor import store_drift_event
        from store.predictions import load_live_predictions

        since = self._fed.get(model_id)
        rows = load_live_predictions(
            self.con, model_id, market=self.market, unit=self.unit, since=since, resolved=True
        )
        if since is not None:
            rows = rows[rows["ts"] > since]
        if rows.empty:
            return
        self._fed[model_id] = rows["ts"].iloc[-1]
        for event in self.monitor.update(model_id, rows):
            action = "none (retrain_on_drift is off)"
            if self.settings.retrain_on_drift:
                if self.retrain is None:
                    action = "no retrain: the session does not run inside `upquant serve`"
                else:
                    reason = (
                        f"drift: {event.stream} {event.before_mean:.3f} -> {event.after_mean:.3f}"
                    )
                    action = self.retrain(self.market, self.unit, "drift", reason)
                    report.retrains += (action,)
            store_drift_event(self.con, replace(event, action=action))
            report.drift_events += 1
            self._say(
                f"drift on {self.market} {self.unit}m model {model_id}: {event.stream}"
                f" {event.before_mean:.3f} -> {event.after_mean:.3f} ({action})",
                "warning",
            )

    def _gate(self, report: CycleReport) -> None:
        from engine.ops.ab import gate_check

        if not self.seated.shadows:
            return
        self._unjudged += report.resolved
        if self._unjudged < self.gate_every and not self._final:
            return  # the gate's verdicts move only at its checkpoints (500, 1000, ... candles)
        self._unjudged = 0
        run = gate_check(self.con, self.market, self.unit, self.settings, last=None)
        report.gate, report.moved = (run.text,), run.moved
        if run.moved or (run.chosen is not None and run.text != self._gate_said):
            # a promotion, or a new recommendation (said once, not on every cycle)
            self._gate_said = run.text
            self._say(f"promotion gate: {run.text}", "info")

    def _reseat(self, report: CycleReport) -> None:
        holders = holder_ids(self.con, self.market, self.unit)
        if holders == self.holders:
            return
        from engine.live.inference_service import InferenceService

        service = self.engine.inference
        seats = load_seats(
            self.con,
            self.market,
            self.unit,
            service if isinstance(service, InferenceService) else None,
        )
        self._references(seats.champion)
        self.holders, self.seated = holders, _SeatIds(*seats.ids)
        self.engine.seat(seats)  # a plain assignment, taken by the loop on the next candle
        report.reseated = True

    def _references(self, model: LoadedModel | None) -> None:
        if model is None or model.record.sha256 in self.guard.references:
            return
        from engine.ops.monitor import feature_reference

        try:
            reference = feature_reference(self.con, model.record, model)
        except Exception as exc:  # noqa: BLE001 - no reference: the gate cannot judge, says so
            self._say(
                f"dissimilarity gate off for {model.record.ref}: no training reference ({exc})",
                "warning",
            )
            return
        self.guard.references = {**self.guard.references, model.record.sha256: reference}

    def _feature_drift(self) -> None:
        model = self.engine.model
        seen = len(self.engine.signals)
        if model is None or seen - self._candles_at_drift < self.feature_drift_every:
            return
        from engine.ops.monitor import record_feature_drift

        self._candles_at_drift = seen
        record_feature_drift(self.con, model.record, self.market, self.unit)

    def _say(self, text: str, level: str) -> None:
        self._report.said.append((text, level))


@dataclass(frozen=True)
class _SeatIds:
    champion: int | None
    shadows: tuple[int, ...]


def _seats_of(engine: LiveEngine) -> _SeatIds:
    champion = engine.model.record.id if engine.model is not None else None
    return _SeatIds(champion, tuple(s.model.record.id for s in engine.shadows))


async def manage(session: Session, *, retrain: Retrain | None = None) -> ModelOpsCycle:
    """Attach model operations to `session` (its runner then ends with a last cycle): one
    cycle per market whose lane seats a model (the first market's always: a session on the
    rule still reseats when a champion is promoted). Returns the first market's."""
    lanes = [session.engine]
    if session.markets is not None:
        lanes += [
            lane
            for lane in session.markets.lanes.values()
            if lane is not session.engine and (lane.model is not None or lane.shadows)
        ]
    cycles = [ModelOpsCycle(lane, retrain=retrain) for lane in lanes]

    def prepare() -> None:
        for cycle in cycles:
            cycle.prepare()

    await asyncio.to_thread(prepare)
    for text, _level in cycles[0]._report.said:  # before anyone follows the session: its banner
        session.banner += f" · {text}"
    for cycle in cycles:
        cycle._report = CycleReport()
        cycle.attach()
    runner = session.runner
    flush = session.markets.flush if session.markets is not None else session.engine.flush

    async def run() -> Any:
        try:
            result = await runner
        except BaseException:  # stopped or failed: the running cycles end, no new one
            for cycle in cycles:
                await cycle.stop()
            raise
        flush()
        for cycle in cycles:
            if session.engine.mode != "demo":
                await cycle.drain()
            await cycle.stop()
        return result

    session.runner = run()
    return cycles[0]


async def open_managed_session(
    con: duckdb.DuckDBPyConnection, market: str | Sequence[str], unit: str, **options: Any
) -> Session:
    """`engine.live.session.open_session` with the session's model operations attached
    (what a face that runs a session in its own process opens; a server's sessions get
    theirs from `LiveOps.start_live`, with retraining)."""
    from engine.live.session import open_session

    session = await open_session(con, market, unit, **options)
    await manage(session)
    return session
