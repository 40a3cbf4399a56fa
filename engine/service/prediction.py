"""Workstation operations that ask a registered model for decisions on stored candles:
`predict` (one candle), `batch_predict` (many markets at one ts, or one market over a range),
and `store_predictions` (the range stored in `predictions`: `upquant predict`).

`predict` and `batch_predict` go through one `engine.live.predictor.Predictor` per
Workstation, so a server (one Workstation for its lifetime) loads each model once and answers
repeated questions from its caches. The Predictor calls models through the Workstation's
`inference` service, the one the live engine uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel, Field, model_validator

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, operation

if TYPE_CHECKING:
    from engine.live.inference_service import InferenceService
    from engine.live.predictor import Prediction, Predictor

ModelRef = Field(description="Model: id, name, name@version or name@champion.")
Threshold = Field(0.5, ge=0.0, le=1.0, description="Confidence needed to act, in [0, 1].")


class PredictRequest(Request):
    model: str = ModelRef
    market: str | None = Field(None, description="Market code; default: the model's market.")
    unit: str | None = Field(None, description="Candle unit; default (and only): the model's.")
    ts: datetime | None = Field(
        None,
        description="Decide on the newest candle at or before this time (candles after it are"
        " never read); default: the newest stored candle.",
    )
    threshold: float = Threshold


class Probabilities(BaseModel):
    sell: float
    hold: float
    buy: float


class PredictionResult(Response):
    """One decision: the action, the model's probabilities (none when the rule decided),
    confidence, which model, the candle decided on, the latency and any fallback reason."""

    market: str
    unit: str
    ts: datetime = Field(description="The candle decided on.")
    action: str
    confidence: float
    probabilities: Probabilities | None
    model: str
    model_id: int
    source: str = Field(description="The model's ref, or the rule's name when it decided.")
    reason: str
    fallback: str | None = Field(description="Why the model could not answer, if it could not.")
    note: str | None = Field(
        description="Set when a bad artifact made a name load an earlier version."
    )
    latency_ms: float
    cached: bool

    @classmethod
    def of(cls, p: Prediction) -> PredictionResult:
        probs = None
        if p.probabilities is not None:
            probs = Probabilities(
                sell=p.probabilities[0], hold=p.probabilities[1], buy=p.probabilities[2]
            )
        return cls(
            market=p.market,
            unit=p.unit,
            ts=p.ts.to_pydatetime(),
            action=p.action,
            confidence=p.confidence,
            probabilities=probs,
            model=p.model,
            model_id=p.model_id,
            source=p.source,
            reason=p.reason,
            fallback=p.fallback,
            note=p.note,
            latency_ms=p.latency_ms,
            cached=p.cached,
        )


class BatchPredictRequest(Request):
    """Either `markets` (each decided at `ts`), or one `market` over `start` <= ts < `end`."""

    model: str = ModelRef
    markets: list[str] | None = Field(
        None, min_length=1, max_length=1000, description="Markets decided at one ts."
    )
    market: str | None = Field(None, description="The one market of a range.")
    unit: str | None = None
    ts: datetime | None = Field(None, description="The one ts of `markets` (default: newest).")
    start: datetime | None = Field(None, description="First candle of the range.")
    end: datetime | None = Field(None, description="End of the range, exclusive.")
    threshold: float = Threshold

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        ranged = self.start is not None or self.end is not None or self.market is not None
        if self.markets is not None and ranged:
            raise ValueError("give either markets (at one ts) or market with start/end, not both")
        if self.markets is None and self.ts is not None:
            raise ValueError("ts goes with markets; a range takes start and end")
        return self


class BatchPrediction(Response):
    model: str
    unit: str
    rows: int
    latency_ms: float = Field(description="The whole batch, features and the model call.")
    predictions: list[PredictionResult]


class StorePredictionsRequest(Request):
    model: str = ModelRef
    market: str | None = None
    start: datetime | None = Field(None, description="First candle (UTC).")
    end: datetime | None = Field(None, description="End, exclusive (UTC).")
    threshold: float = Threshold


class PredictionRow(BaseModel):
    ts: datetime
    p_sell: float
    p_hold: float
    p_buy: float
    action: str
    label: str | None


class StoredPredictions(Response):
    model: str
    model_id: int
    market: str
    unit: str
    stored: int
    note: str | None
    rows: list[PredictionRow]


class PredictionOps(StoreHolder):
    @property
    def inference(self) -> InferenceService:
        """This Workstation's inference service: the one cache of loaded models (on their
        devices) and of answers per candle, shared by the live engine and `predictor()`, so
        that a model is loaded once and a candle predicted once whichever face asks."""
        service = self.__dict__.get("_inference")
        if service is None:
            from engine.live.inference_service import InferenceService

            service = self.__dict__.setdefault("_inference", InferenceService())
        return service  # type: ignore[no-any-return]

    def predictor(self) -> Predictor:
        """This Workstation's prediction service (its caches live as long as it does)."""
        predictor = self.__dict__.get("_predictor")
        if predictor is None:
            from engine.live.predictor import Predictor

            # a server (serving() was called) settles its heap after each model load
            served = getattr(self, "served_at", None) is not None
            predictor = self.__dict__.setdefault(
                "_predictor", Predictor(settle=served, inference=self.inference)
            )
        return predictor  # type: ignore[no-any-return]

    def from_memory(self, name: str, request: Request) -> Response | None:
        """The answer of operation `name` when it needs neither the store nor a model call
        (a repeated `predict`: everything in the predictor's memory), else None. Never
        blocks, so the server asks it on its event loop before handing the operation to a
        worker thread (the hop costs more than such an answer)."""
        if name != "predict" or not isinstance(request, PredictRequest):
            return None
        predictor = self.__dict__.get("_predictor")
        if predictor is None:
            return None
        from engine.upbit.markets import check_market, check_unit

        try:
            market = check_market(request.market) if request.market else None
            unit = check_unit(request.unit) if request.unit else None
        except ValueError:
            return None  # the operation says what is wrong
        found = predictor.from_memory(request.model, market, unit, request.ts, request.threshold)
        return None if found is None else PredictionResult.of(found)

    @operation("read")
    def predict(self, request: PredictRequest) -> PredictionResult:
        """A model's decision on one candle: action, probabilities, confidence, latency."""
        from engine.upbit.markets import check_market, check_unit

        market = check_market(request.market) if request.market else None
        unit = check_unit(request.unit) if request.unit else None
        result = self.predictor().predict(
            self.con(), request.model, market, unit, request.ts, request.threshold
        )
        return PredictionResult.of(result)

    @operation("read")
    def batch_predict(self, request: BatchPredictRequest) -> BatchPrediction:
        """A model's decisions for many markets at one ts, or one market over a range."""
        import time

        from engine.upbit.markets import check_market, check_unit

        started = time.perf_counter()
        unit = check_unit(request.unit) if request.unit else None
        predictor = self.predictor()
        if request.markets is not None:
            markets = [check_market(m) for m in request.markets]
            found = predictor.predict_markets(
                self.con(), request.model, markets, unit, request.ts, request.threshold
            )
        else:
            found = predictor.predict_range(
                self.con(),
                request.model,
                check_market(request.market) if request.market else None,
                unit,
                request.start,
                request.end,
                request.threshold,
            )
        if found:
            model, unit = found[0].model, found[0].unit
        else:  # an empty range: still say which model would have answered
            record = predictor.model(self.con(), request.model)[0].record
            model, unit = record.ref, record.unit
        return BatchPrediction(
            model=model,
            unit=unit,
            rows=len(found),
            latency_ms=(time.perf_counter() - started) * 1000,
            predictions=[PredictionResult.of(p) for p in found],
        )

    @operation("write")
    def store_predictions(self, request: StorePredictionsRequest) -> StoredPredictions:
        """Predict every stored candle in the range (vectorised) and store the probabilities."""
        from engine.training.batch import predict_range
        from engine.upbit.markets import check_market

        result = predict_range(
            self.con(),
            request.model,
            check_market(request.market) if request.market else None,
            request.start,
            request.end,
            threshold=request.threshold,
        )
        frame = result.frame
        rows = [
            PredictionRow(
                ts=ts.to_pydatetime(),
                p_sell=s,
                p_hold=h,
                p_buy=b,
                action=str(a),
                label=label if isinstance(label, str) else None,  # NaN: not resolved yet
            )
            for ts, s, h, b, a, label in zip(
                frame["ts"],
                frame["p_sell"],
                frame["p_hold"],
                frame["p_buy"],
                frame["action"],
                frame["label"],
                strict=True,
            )
        ]
        return StoredPredictions(
            model=result.model,
            model_id=result.model_id,
            market=result.market,
            unit=result.unit,
            stored=result.stored,
            note=result.note,
            rows=rows,
        )
