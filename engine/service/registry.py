"""Workstation operations on the model registry: list, show, register, update (description,
tags, status, alias moves), promote, rollback, delete, compare, and a model's metrics.

Models are named by any reference `store.model_refs.resolve` reads (id, name, name@version,
name@champion). The rules (the promotion gate, what may be deleted) are `engine.ops.promotion`'s
and `store.registry`'s; these operations add the answers every face shows and the statuses
(404, 409) a refusal answers with.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import Conflict, NotFound, Request, Response, ServiceError, operation

if TYPE_CHECKING:
    import duckdb

    from store.registry import ModelRecord

ModelRef = Field(description="Model: id, name (newest version), name@version or name@champion.")
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
        None, description="Only this status or alias: candidate, champion, retired, rolled_back."
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


class AliasMove(BaseModel):
    """Who holds an alias of a market/unit after a promotion or rollback, and who held it."""

    alias: str
    market: str
    unit: str
    model: str
    model_id: int
    previous: str | None
    previous_id: int | None
    previous_status: str | None = Field(description="What the previous holder is now.")


class ModelUpdateRequest(Request):
    """Edits of one model; alias moves happen first, then status, tags and description."""

    model: str = ModelRef
    description: str | None = Field(None, max_length=2000, description="'' removes it.")
    tags: dict[str, Any] | None = Field(
        None, description="Merged into the model's tags; a null value removes that tag."
    )
    status: Literal["candidate", "retired"] | None = None
    alias: Literal["champion"] | None = Field(
        None, description="Move this alias here (champion: promote, artifact verified first)."
    )
    rollback: bool = Field(
        False, description="This model is the champion: give the alias back to the previous one."
    )


class ModelUpdated(ModelDetails):
    moved: AliasMove | None


class RollbackRequest(Request):
    market: str
    unit: str = "1"


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


class ModelMetrics(Response):
    model: str
    model_id: int
    test: dict[str, float | None]
    validation: dict[str, float | None]
    splits: Metrics = Field(description="Every stored split: baselines and trading reports too.")
    epochs: list[EpochMetrics] = Field(description="Per epoch (or trial) of its training run.")
    live: dict[str, float | None] | None = Field(
        description="Live metrics (none are recorded yet: null)."
    )


# --- the operations -----------------------------------------------------------------------------
def _description(record: ModelRecord) -> str | None:
    value = (record.tags or {}).get("description")
    return None if value is None else str(value)


def summary(con: duckdb.DuckDBPyConnection, record: ModelRecord) -> dict[str, Any]:
    from store.registry import model_metrics

    return {
        "id": record.id,
        "ref": record.ref,
        "name": record.name,
        "version": record.version,
        "kind": record.kind,
        "market": record.market,
        "unit": record.unit,
        "status": record.status,
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


class RegistryOps(StoreHolder):
    @operation("read")
    def model_list(self, request: ModelListRequest) -> ModelList:
        """Registered models with status and final metrics, filtered and paged."""
        from engine.upbit.markets import check_market, check_unit
        from store.registry import list_models

        market = check_market(request.market) if request.market else None
        unit = check_unit(request.unit) if request.unit else None
        con = self.con()
        records = [
            r
            for r in list_models(con, market, unit)
            if (request.kind is None or r.kind == request.kind)
            and (request.status is None or r.status == request.status)
        ]
        end = None if request.limit is None else request.offset + request.limit
        page = records[request.offset : end]
        return ModelList(
            items=[ModelSummary(**summary(con, r)) for r in page],
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
        if request.alias is not None and request.rollback:
            raise ServiceError("give alias or rollback, not both", "one move per request")
        moved = None
        if request.alias == "champion":
            moved = self._promote(record)
        elif request.rollback:
            if record.status != "champion":
                raise Conflict(
                    f"{record.ref} is not the champion of {record.market} unit {record.unit}:"
                    " there is nothing of it to roll back",
                    "roll back the champion (GET /api/v1/ml-models?status=champion)",
                )
            moved = self._rollback(record.market, record.unit)
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

    def _promote(self, record: ModelRecord) -> AliasMove:
        from engine.ops.promotion import promote
        from store.registry import champion, get_model

        con = self.con()
        before = champion(con, record.market, record.unit)
        promote(con, str(record.id))
        previous = None if before is None or before.id == record.id else get_model(con, before.id)
        return AliasMove(
            alias="champion",
            market=record.market,
            unit=record.unit,
            model=record.ref,
            model_id=record.id,
            previous=previous.ref if previous else None,
            previous_id=previous.id if previous else None,
            previous_status=previous.status if previous else None,
        )

    def _rollback(self, market: str, unit: str) -> AliasMove:
        from engine.ops.promotion import rollback

        try:
            demoted, restored = rollback(self.con(), market, unit)
        except KeyError as exc:
            raise Conflict(
                str(exc.args[0]), "promote a model instead (PUT with alias: champion)"
            ) from None
        return AliasMove(
            alias="champion",
            market=restored.market,
            unit=restored.unit,
            model=restored.ref,
            model_id=restored.id,
            previous=demoted.ref,
            previous_id=demoted.id,
            previous_status=demoted.status,
        )

    @operation("write")
    def model_promote(self, request: ModelRefRequest) -> AliasMove:
        """Make a model the champion of its market/unit (after verifying its artifact)."""
        return self._promote(resolve(self.con(), request.model))

    @operation("write")
    def model_rollback(self, request: RollbackRequest) -> AliasMove:
        """Demote the champion of a market/unit and restore the previous one."""
        from engine.upbit.markets import check_market, check_unit

        return self._rollback(check_market(request.market), check_unit(request.unit))

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
    def model_metrics(self, request: ModelRefRequest) -> ModelMetrics:
        """A model's metrics: test, validation, every stored split, per epoch of its run."""
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
            live=None,
        )
