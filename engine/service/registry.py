"""Workstation operations on the model registry: list, show, register, update (description,
tags, status, alias moves), promote, rollback, alias, unalias, the alias history, delete,
compare, and a model's metrics.

Models are named by any reference `store.model_refs.resolve` reads (id, name, name@version,
name@champion, name@challenger, name@shadow). Aliases (one champion per market/unit, any
number of challengers and shadows) move by `model_alias`, `model_unalias`, promote and
rollback; every move is appended to the history `alias_history` reads. The rules (the
promotion gate, what may be deleted, how aliases move) are `engine.ops.promotion`'s and
`store.registry`'s; these operations add the answers every face shows and the statuses (404,
409) a refusal answers with.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import Conflict, NotFound, Request, Response, ServiceError, operation
from engine.service.outcomes import LIVE_WINDOW, LiveMetricsInfo, live_metrics_info

if TYPE_CHECKING:
    import duckdb

    from store.registry import AliasEvent, AliasRefused, ModelRecord

ModelRef = Field(
    description="Model: id, name (newest version), name@version or name@<alias> (champion,"
    " challenger, shadow)."
)
AliasName = Literal["champion", "challenger", "shadow"]
Metrics = dict[str, dict[str, float | None]]


def finite(value: Any) -> float | None:
    """A metric as JSON carries it: undefined (NaN, ±inf) is null."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def finite_metrics(metrics: dict[str, dict[str, Any]]) -> Metrics:
    return {split: {k: finite(v) for k, v in named.items()} for split, named in metrics.items()}


def resolve(con: duckdb.DuckDBPyConnection, ref: str) -> ModelRecord:
    """The model `ref` names, or NotFound / a 400 saying how to name one."""
    from store.model_refs import BadReference, resolve

    try:
        return resolve(con, ref)
    except BadReference as exc:
        raise ServiceError(str(exc), exc.hint) from None
    except KeyError as exc:
        raise NotFound(
            str(exc.args[0]), "see `upquant models list` (GET /api/v1/ml-models)"
        ) from None


def canonical(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """`ref` for the engine's loaders: an alias pinned to the version it names now."""
    from store.model_refs import is_alias

    return resolve(con, ref).ref if is_alias(ref) else ref.strip()


# --- requests and responses ---------------------------------------------------------------------
class ModelRefRequest(Request):
    model: str = ModelRef


class ModelShowRequest(ModelRefRequest):
    verify: bool = Field(True, description="Load the artifact to verify it (integrity).")


class ModelListRequest(Request):
    market: str | None = Field(None, description="Only this market, e.g. KRW-BTC.")
    unit: str | None = Field(None, description="Only this candle unit.")
    kind: str | None = Field(None, description="Only this model kind, e.g. xgboost.")
    status: str | None = Field(
        None,
        description="Only this status or alias: candidate, champion, retired, rolled_back,"
        " challenger, shadow.",
    )
    limit: int | None = Field(None, ge=1, le=1000, description="At most this many (default: all).")
    offset: int = Field(0, ge=0, description="Skip this many first (oldest first, by id).")


class ModelSummary(BaseModel):
    id: int
    ref: str
    name: str
    version: int
    kind: str
    market: str
    unit: str
    status: str
    aliases: list[str] = Field(
        default_factory=list, description="The aliases it holds: champion, challenger, shadow."
    )
    created_at: datetime
    description: str | None
    metrics: Metrics = Field(description="Final metrics by split (test, validation, trading_*).")


class ModelList(Response):
    """One page of the registry, oldest first, and how many match in all."""

    items: list[ModelSummary]
    total: int
    limit: int | None
    offset: int


class ModelDetails(ModelSummary):
    artifact: str
    sha256: str
    size: int
    integrity: str | None = Field(description="verified, REFUSED: why, or null (not checked).")
    feature_spec_hash: str
    feature_spec: dict[str, Any]
    label_spec: dict[str, Any]
    params: dict[str, Any]
    search_space: dict[str, Any] | None
    tags: dict[str, Any] | None
    parent_id: int | None


class ModelRegisterRequest(Request):
    """A model whose artifact is already in the store's artifact directory
    (`$UPQUANT_HOME/artifacts/<sha256>.tar`): nothing is uploaded."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^@\s]+$")
    kind: str = Field(description="A single model kind (xgboost, lstm, ...).")
    market: str
    unit: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    feature_spec: dict[str, Any]
    label_spec: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, Any] | None = None
    description: str | None = Field(None, max_length=2000)


class AliasEventInfo(BaseModel):
    """One move in the alias history: `model` gained `alias` (null: released), `previous`
    lost it (null: nobody held it)."""

    id: int
    market: str
    unit: str
    alias: str
    model: str | None
    model_id: int | None
    previous: str | None
    previous_id: int | None
    at: datetime
    by: str = Field(description="Who moved it: user, gate, schedule or drift.")
    reason: str | None


class AliasHolderInfo(BaseModel):
    alias: str
    model: str
    model_id: int
    since: datetime


class AliasMove(Response):
    """Who holds an alias of a market/unit after a move, who held it, and the events the move
    appended to the history (none: it held the alias already)."""

    alias: str
    market: str
    unit: str
    model: str
    model_id: int
    previous: str | None
    previous_id: int | None
    previous_status: str | None = Field(description="What the previous holder is now.")
    events: list[AliasEventInfo] = Field(default_factory=list)


class ModelAliasRequest(Request):
    model: str = ModelRef
    alias: AliasName = Field(
        description="champion (promote: taken from its holder), challenger or shadow (the"
        " model's own; the alias it held before is released)."
    )
    reason: str | None = Field(None, max_length=500, description="Why, kept in the history.")


class ModelUnaliasRequest(Request):
    model: str = ModelRef
    alias: Literal["challenger", "shadow"] = Field(
        description="The alias to release (champion only moves: promote another or roll back)."
    )
    reason: str | None = Field(None, max_length=500, description="Why, kept in the history.")


class AliasHistoryRequest(Request):
    market: str = Field(description="Market, e.g. KRW-BTC.")
    unit: str = "1"
    limit: int | None = Field(None, ge=1, le=10000, description="At most this many newest moves.")


class AliasHistory(Response):
    """The holders of a market/unit's aliases now, and its moves, newest first."""

    market: str
    unit: str
    holders: list[AliasHolderInfo]
    events: list[AliasEventInfo]


class ModelUpdateRequest(Request):
    """Edits of one model; alias moves happen first, then status, tags and description."""

    model: str = ModelRef
    description: str | None = Field(None, max_length=2000, description="'' removes it.")
    tags: dict[str, Any] | None = Field(
        None, description="Merged into the model's tags; a null value removes that tag."
    )
    status: Literal["candidate", "retired"] | None = None
    alias: AliasName | None = Field(
        None,
        description="Move this alias here (artifact verified first; champion: promote, taken"
        " from its holder).",
    )
    unalias: Literal["challenger", "shadow"] | None = Field(
        None, description="Release this alias of the model."
    )
    rollback: bool = Field(
        False, description="This model is the champion: give the alias back to the previous one."
    )
    reason: str | None = Field(None, max_length=500, description="Why the move, kept in history.")


class ModelUpdated(ModelDetails):
    moved: AliasMove | None


class RollbackRequest(Request):
    market: str
    unit: str = "1"
    reason: str | None = Field(None, max_length=500, description="Why, kept in the history.")


class ModelDeleted(Response):
    id: int
    ref: str
    artifact_removed: bool = Field(description="No other model used its artifact: it went too.")


class ModelCompareRequest(Request):
    models: list[str] = Field(min_length=2, max_length=20, description="Two or more models.")


class ModelComparison(Response):
    """Stored test metrics side by side: `values[column][metric]`, rows in `metrics` order."""

    columns: list[str]
    metrics: list[str]
    values: Metrics


class EpochMetrics(BaseModel):
    step: int
    metrics: dict[str, float | None]


class ModelMetricsRequest(ModelRefRequest):
    last: int = Field(
        LIVE_WINDOW, ge=1, le=100_000, description="Live metrics over its newest N live rows."
    )


class ModelMetrics(Response):
    model: str
    model_id: int
    test: dict[str, float | None]
    validation: dict[str, float | None]
    splits: Metrics = Field(description="Every stored split: baselines and trading reports too.")
    epochs: list[EpochMetrics] = Field(description="Per epoch (or trial) of its training run.")
    live: LiveMetricsInfo | None = Field(
        description="Live metrics of its newest live predictions (null: it has none)."
    )


# --- the operations -----------------------------------------------------------------------------
def _description(record: ModelRecord) -> str | None:
    value = (record.tags or {}).get("description")
    return None if value is None else str(value)


def summary(
    con: duckdb.DuckDBPyConnection, record: ModelRecord, aliases: list[str] | None = None
) -> dict[str, Any]:
    from store.registry import model_aliases, model_metrics

    return {
        "id": record.id,
        "ref": record.ref,
        "name": record.name,
        "version": record.version,
        "kind": record.kind,
        "market": record.market,
        "unit": record.unit,
        "status": record.status,
        "aliases": model_aliases(con, record.id) if aliases is None else aliases,
        "created_at": record.created_at,
        "description": _description(record),
        "metrics": finite_metrics(model_metrics(con, record.id)),
    }


def details(con: duckdb.DuckDBPyConnection, record: ModelRecord, verify: bool) -> dict[str, Any]:
    from engine.ops.promotion import artifact_integrity

    return {
        **summary(con, record),
        "artifact": record.artifact,
        "sha256": record.sha256,
        "size": record.size,
        "integrity": artifact_integrity(record) if verify else None,
        "feature_spec_hash": record.feature_spec_hash,
        "feature_spec": record.feature_spec,
        "label_spec": record.label_spec,
        "params": {k: v for k, v in record.params.items() if k not in ("columns", "search")},
        "search_space": record.params.get("search", {}).get("space"),
        "tags": record.tags,
        "parent_id": record.parent_id,
    }


def event_info(event: AliasEvent) -> AliasEventInfo:
    return AliasEventInfo(
        id=event.id,
        market=event.market,
        unit=event.unit,
        alias=event.alias,
        model=event.model_ref,
        model_id=event.model_id,
        previous=event.previous_ref,
        previous_id=event.previous_model_id,
        at=event.moved_at,
        by=event.moved_by,
        reason=event.reason,
    )


def refused(exc: AliasRefused) -> Conflict:
    """An alias move the rules forbid, as the 409 every face shows."""
    return Conflict(str(exc), exc.hint)


class RegistryOps(StoreHolder):
    @operation("read")
    def model_list(self, request: ModelListRequest) -> ModelList:
        """Registered models with status and final metrics, filtered and paged."""
        from engine.upbit.markets import check_market, check_unit
        from store.registry import aliases_by_model, list_models

        market = check_market(request.market) if request.market else None
        unit = check_unit(request.unit) if request.unit else None
        con = self.con()
        held = aliases_by_model(con)
        records = [
            r
            for r in list_models(con, market, unit)
            if (request.kind is None or r.kind == request.kind)
            and (
                request.status is None
                or r.status == request.status
                or request.status in held.get(r.id, [])
            )
        ]
        end = None if request.limit is None else request.offset + request.limit
        page = records[request.offset : end]
        return ModelList(
            items=[ModelSummary(**summary(con, r, held.get(r.id, []))) for r in page],
            total=len(records),
            limit=request.limit,
            offset=request.offset,
        )

    @operation("read")
    def model_show(self, request: ModelShowRequest) -> ModelDetails:
        """One model: specs, parameters, artifact (verified), tags, metrics."""
        con = self.con()
        return ModelDetails(**details(con, resolve(con, request.model), request.verify))

    @operation("write")
    def model_register(self, request: ModelRegisterRequest) -> ModelDetails:
        """Register an artifact already in the artifact store, verified by sha256 and loaded
        as its kind first; it becomes a `candidate` (promote it to serve)."""
        from engine.live.inference import load_record
        from engine.research.features import FeatureSpec
        from engine.research.labels import LabelSpec
        from engine.upbit.markets import check_market, check_unit
        from models import MODEL_KINDS
        from store.artifacts import ArtifactError, artifact_path
        from store.model_refs import SYSTEM_TAGS
        from store.registry import ModelRecord, register_model

        if request.kind not in MODEL_KINDS:
            raise ServiceError(
                f"kind {request.kind!r} cannot be registered from an artifact",
                f"choose one of {', '.join(MODEL_KINDS)} (ensembles are built by `upquant"
                " ensemble`)",
            )
        market, unit = check_market(request.market), check_unit(request.unit)
        tags = dict(request.tags or {})
        if SYSTEM_TAGS & set(tags):
            raise ServiceError(
                f"tags {', '.join(sorted(SYSTEM_TAGS & set(tags)))} are the trainer's",
                "leave them out: a registered artifact has no recorded data split",
            )
        if request.description:
            tags["description"] = request.description
        try:
            features = FeatureSpec.from_dict(request.feature_spec)
            LabelSpec.from_dict(request.label_spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise ServiceError(
                f"bad feature_spec or label_spec: {exc}", "copy them from `upquant models show`"
            ) from None
        path = artifact_path(None, request.sha256)
        if not path.is_file():
            raise NotFound(
                f"no artifact {request.sha256[:12]}… in the artifact store ({path.parent})",
                "copy the artifact there as <sha256>.tar first; nothing is uploaded",
            )
        draft = ModelRecord(
            id=0,
            name=request.name,
            version=0,
            kind=request.kind,
            market=market,
            unit=unit,
            feature_spec=request.feature_spec,
            feature_spec_hash=features.hash(),
            label_spec=request.label_spec,
            params=request.params,
            artifact=str(path),
            sha256=request.sha256,
            size=path.stat().st_size,
            status="candidate",
            created_at=datetime.now(UTC),
            parent_id=None,
            tags=tags or None,
        )
        try:
            load_record(draft)  # sha256 checked, then loaded as its kind
        except (ArtifactError, OSError, ValueError) as exc:
            raise ServiceError(
                f"artifact {request.sha256[:12]}… refused: {exc}",
                "register only artifacts written by upquant, with their own sha256 and kind",
            ) from None
        record = register_model(
            self.con(),
            name=draft.name,
            kind=draft.kind,
            market=market,
            unit=unit,
            feature_spec=draft.feature_spec,
            feature_spec_hash=draft.feature_spec_hash,
            label_spec=draft.label_spec,
            params=draft.params,
            artifact=draft.artifact,
            sha256=draft.sha256,
            size=draft.size,
            status="candidate",
            metrics={},
            tags=draft.tags,
        )
        return ModelDetails(**details(self.con(), record, verify=False))

    @operation("write")
    def model_update(self, request: ModelUpdateRequest) -> ModelUpdated:
        """Edit a model: move an alias here (promote) or back (rollback), set its status,
        merge tags, set its description."""
        from store.model_refs import update_model

        con = self.con()
        record = resolve(con, request.model)
        if sum((request.alias is not None, request.unalias is not None, request.rollback)) > 1:
            raise ServiceError("give one of alias, unalias or rollback", "one move per request")
        moved = None
        if request.alias is not None:
            moved = self._move(record, request.alias, request.reason)
        elif request.unalias is not None:
            moved = self._release(record, request.unalias, request.reason)
        elif request.rollback:
            if record.status != "champion":
                raise Conflict(
                    f"{record.ref} is not the champion of {record.market} unit {record.unit}:"
                    " there is nothing of it to roll back",
                    "roll back the champion (GET /api/v1/ml-models?status=champion)",
                )
            moved = self._rollback(record.market, record.unit, request.reason)
        record = resolve(con, str(record.id))
        if request.status is not None and record.status == "champion":
            raise Conflict(
                f"{record.ref} is the champion of {record.market} unit {record.unit}",
                "promote another model or roll back first",
            )
        tags = dict(request.tags or {})
        if request.description is not None:
            tags["description"] = request.description or None
        if tags or request.status is not None:
            record = update_model(con, record.id, tags=tags or None, status=request.status)
        return ModelUpdated(**details(con, record, verify=False), moved=moved)

    def _move(self, record: ModelRecord, alias: str, reason: str | None) -> AliasMove:
        """Give `alias` to `record` (artifact verified first), by the user."""
        from engine.ops.promotion import move
        from store.registry import AliasRefused, champion, get_model

        con = self.con()
        before = champion(con, record.market, record.unit) if alias == "champion" else None
        try:
            events = move(con, record, alias, by="user", reason=reason)
        except AliasRefused as exc:
            raise refused(exc) from None
        previous = None if before is None or before.id == record.id else get_model(con, before.id)
        return AliasMove(
            alias=alias,
            market=record.market,
            unit=record.unit,
            model=record.ref,
            model_id=record.id,
            previous=previous.ref if previous else None,
            previous_id=previous.id if previous else None,
            previous_status=previous.status if previous else None,
            events=[event_info(e) for e in events],
        )

    def _release(self, record: ModelRecord, alias: str, reason: str | None) -> AliasMove:
        from engine.ops.promotion import release
        from store.registry import AliasRefused

        try:
            event = release(self.con(), record, alias, by="user", reason=reason)
        except AliasRefused as exc:
            raise refused(exc) from None
        return AliasMove(
            alias=alias,
            market=record.market,
            unit=record.unit,
            model=record.ref,
            model_id=record.id,
            previous=record.ref,
            previous_id=record.id,
            previous_status=record.status,
            events=[event_info(event)],
        )

    def _rollback(self, market: str, unit: str, reason: str | None = None) -> AliasMove:
        from engine.ops.promotion import rollback
        from store.registry import alias_history

        con = self.con()
        try:
            demoted, restored = rollback(con, market, unit, by="user", reason=reason)
        except KeyError as exc:
            raise Conflict(
                str(exc.args[0]), "promote a model instead (PUT with alias: champion)"
            ) from None
        newest = alias_history(con, market, unit, limit=1)
        return AliasMove(
            alias="champion",
            market=restored.market,
            unit=restored.unit,
            model=restored.ref,
            model_id=restored.id,
            previous=demoted.ref,
            previous_id=demoted.id,
            previous_status=demoted.status,
            events=[event_info(e) for e in newest],
        )

    @operation("write")
    def model_promote(self, request: ModelRefRequest) -> AliasMove:
        """Make a model the champion of its market/unit (after verifying its artifact)."""
        return self._move(resolve(self.con(), request.model), "champion", None)

    @operation("write")
    def model_rollback(self, request: RollbackRequest) -> AliasMove:
        """Move the champion alias of a market/unit back to its previous holder."""
        from engine.upbit.markets import check_market, check_unit

        return self._rollback(
            check_market(request.market), check_unit(request.unit), request.reason
        )

    @operation("write")
    def model_alias(self, request: ModelAliasRequest) -> AliasMove:
        """Give a model an alias of its market/unit: champion (promote), challenger or shadow."""
        return self._move(resolve(self.con(), request.model), request.alias, request.reason)

    @operation("write")
    def model_unalias(self, request: ModelUnaliasRequest) -> AliasMove:
        """Release a model's challenger or shadow alias (champion only moves)."""
        return self._release(resolve(self.con(), request.model), request.alias, request.reason)

    @operation("read")
    def alias_history(self, request: AliasHistoryRequest) -> AliasHistory:
        """Who holds the aliases of a market/unit now, and every move, newest first."""
        from engine.upbit.markets import check_market, check_unit
        from store.registry import alias_history, alias_holders

        market, unit = check_market(request.market), check_unit(request.unit)
        con = self.con()
        return AliasHistory(
            market=market,
            unit=unit,
            holders=[
                AliasHolderInfo(alias=h.alias, model=h.ref, model_id=h.model_id, since=h.since)
                for h in alias_holders(con, market, unit)
            ],
            events=[event_info(e) for e in alias_history(con, market, unit, request.limit)],
        )

    @operation("write")
    def model_delete(self, request: ModelRefRequest) -> ModelDeleted:
        """Delete a model, its metrics and (if no other model uses it) its artifact."""
        from engine.ops.promotion import delete
        from store.registry import ensembles_using

        con = self.con()
        record = resolve(con, request.model)
        if record.status == "champion":
            raise Conflict(
                f"{record.ref} is the champion of {record.market} unit {record.unit}",
                "promote another model or roll back first",
            )
        users = ensembles_using(con, record.id)
        if users:
            raise Conflict(
                f"{record.ref} is a member of {', '.join(u.ref for u in users)}",
                "delete those ensembles first",
            )
        return ModelDeleted(id=record.id, ref=record.ref, artifact_removed=delete(con, record))

    @operation("read")
    def model_compare(self, request: ModelCompareRequest) -> ModelComparison:
        """Stored test metrics of several models side by side, with their baselines."""
        from engine.training.evaluation import compare_models

        con = self.con()
        frame = compare_models(con, [canonical(con, ref) for ref in request.models])
        return ModelComparison(
            columns=[str(c) for c in frame.columns],
            metrics=[str(i) for i in frame.index],
            values={
                str(column): {str(k): finite(v) for k, v in frame[column].items()}
                for column in frame.columns
            },
        )

    @operation("read")
    def model_metrics(self, request: ModelMetricsRequest) -> ModelMetrics:
        """A model's metrics: stored (test, validation, every split, per epoch) and live.

        Live: over its newest live predictions (engine.ops.live_metrics); null without any."""
        from store.registry import model_metrics, run_epochs

        con = self.con()
        record = resolve(con, request.model)
        splits = finite_metrics(model_metrics(con, record.id))
        run_id = (record.tags or {}).get("run_id")
        epochs = []
        if isinstance(run_id, int) or (isinstance(run_id, str) and re.fullmatch(r"\d+", run_id)):
            epochs = [
                EpochMetrics(step=step, metrics={k: finite(v) for k, v in named.items()})
                for step, named in run_epochs(con, int(run_id)).items()
            ]
        return ModelMetrics(
            model=record.ref,
            model_id=record.id,
            test=splits.get("test", {}),
            validation=splits.get("validation", {}),
            splits=splits,
            epochs=epochs,
            # in process, a plain ModelRefRequest asks for the default window
            live=live_metrics_info(con, record.id, last=getattr(request, "last", LIVE_WINDOW)),
        )
