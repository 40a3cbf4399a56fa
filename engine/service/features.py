"""Workstation operations on features: a feature file built from stored candles
(`features_build`) and what each feature kind and a spec's columns need (`features_list`).

A spec comes inline (`spec`, the JSON form of `FeatureSpec.to_dict`) or as a JSON file on
the store's machine (`spec_file`, absolute); neither means the built-in default spec.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, ServiceError, operation
from engine.service.data import local_file

if TYPE_CHECKING:
    from engine.research.features import FeatureSpec


class SpecRequest(Request):
    spec: dict[str, Any] | None = Field(
        None, description="Feature spec ({'features': [...], 'talib': ..., 'max_gap': ...})."
    )
    spec_file: str | None = Field(
        None, description="Absolute path of a feature spec JSON file (instead of spec)."
    )

    def feature_spec(self) -> FeatureSpec:
        """The spec asked for: inline, from the file, or the default."""
        from engine.research.features import DEFAULT_SPEC, FeatureSpec, load_feature_spec

        if self.spec is not None and self.spec_file is not None:
            raise ServiceError(
                "give the feature spec once: spec (inline) or spec_file, not both",
                "drop one of them",
            )
        if self.spec_file is not None:
            return load_feature_spec(local_file(self.spec_file, "feature spec file", exists=False))
        if self.spec is not None:
            try:
                return FeatureSpec.from_dict(self.spec)
            except (TypeError, KeyError) as exc:
                raise ServiceError(f"feature spec: {exc}", "see `upquant features list`") from None
        return DEFAULT_SPEC


class FeaturesBuildRequest(SpecRequest):
    market: str
    unit: str = "1"
    out: str = Field(..., description="Absolute path of the Parquet file to write.")


class FeaturesBuild(Response):
    """The feature file written: rows with every feature defined, and what was left out."""

    path: str
    market: str
    unit: str
    rows: int
    columns: int
    dropped: int
    spec_hash: str
    first: datetime | None
    last: datetime | None
    seconds: float


class FeaturesListRequest(SpecRequest):
    market: str | None = Field(
        None, description="Also measure each column's warm-up on this market's stored candles."
    )
    unit: str = "1"


class FeatureKindInfo(BaseModel):
    kind: str
    group: str
    params: dict[str, Any]
    doc: str


class SpecInfo(BaseModel):
    version: int
    talib: bool
    max_gap: int | None
    features: list[dict[str, Any]]
    hash: str
    warmup: int
    window: int


class ColumnInfo(BaseModel):
    column: str
    kind: str
    group: str
    params: dict[str, Any]
    warmup: int
    memory: int
    measured: int | None = Field(None, description="Warm-up measured on stored candles.")


class FeaturesList(Response):
    """Every feature kind with its defaults, the spec, and its columns' warm-up and memory
    (and, with a market, the warm-up measured on its stored candles)."""

    kinds: list[FeatureKindInfo]
    spec: SpecInfo
    columns: list[ColumnInfo]


class FeaturesOps(StoreHolder):
    @operation("write")
    def features_build(self, request: FeaturesBuildRequest) -> FeaturesBuild:
        """Compute features of a market's stored candles and write them to a Parquet file."""
        from engine.research.dataset import build_feature_file
        from engine.upbit.markets import check_market, check_unit

        market, unit = check_market(request.market), check_unit(request.unit)
        spec = request.feature_spec()
        out = local_file(request.out, "feature file", exists=False)
        report = build_feature_file(self.con(), market, unit, spec, out)
        return FeaturesBuild(
            path=str(report.path),
            market=market,
            unit=unit,
            rows=report.rows,
            columns=report.columns,
            dropped=report.dropped,
            spec_hash=report.spec_hash,
            first=report.first,
            last=report.last,
            seconds=report.seconds,
        )

    @operation("read")
    def features_list(self, request: FeaturesListRequest) -> FeaturesList:
        """Every feature kind with its parameters, then the spec's columns with their warm-up."""
        from engine.research.features import FEATURE_KINDS, describe_spec
        from engine.upbit.markets import check_market, check_unit

        spec = request.feature_spec()
        measured: dict[str, int] = {}
        if request.market is not None:
            from engine.research.dataset import stored_warmup

            market, unit = check_market(request.market), check_unit(request.unit)
            measured = stored_warmup(self.con(), market, unit, spec)
        return FeaturesList(
            kinds=[
                FeatureKindInfo(kind=k.name, group=k.group, params=k.defaults, doc=k.doc)
                for k in FEATURE_KINDS.values()
            ],
            spec=SpecInfo(
                **spec.to_dict(), hash=spec.hash(), warmup=spec.warmup(), window=spec.window()
            ),
            columns=[
                ColumnInfo(**row, measured=measured.get(row["column"]) if measured else None)
                for row in describe_spec(spec)
            ],
        )
