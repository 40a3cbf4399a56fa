"""The inference service on a real XGBoost model and a tiny real LSTM trained on 1500 real
candles: one load per artifact for every market and face, one model call per pass, answers
equal to the model's own `predict_last`, hits without a call, a bad row failing only its own
market, the per-pass timeout, and the CPU fallback when a CUDA call fails (on CUDA itself
when the machine has one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.live.inference import InferenceError, LoadedModel
from engine.live.inference_service import InferenceService
from engine.live.predictor import Predictor
from engine.research.features import compute_features
from engine.service import Workstation
from engine.training.train import train_model
from models.lstm import LSTMModel
from models.xgb import XGBoostModel
from store.candles import load_candles, upsert_candles
from store.db import connect
from tests.conftest import shared_candles

ROWS = 1500
TOLERANCE = {"xgboost": 1e-12, "lstm": 1e-6}  # one forward over a batch: float32 blocking


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("inference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        patch.delenv("UPQUANT_ARTIFACT_KEY", raising=False)
        patch.delenv("UPQUANT_ARTIFACT_KEY_FILE", raising=False)
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", ROWS))
        xgb = train_model(
            con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 20, "device": "cpu"}
        ).model
        lstm = train_model(
            con, "lstm", "KRW-BTC", "1",
            params={"epochs": 1, "device": "cpu", "hidden": 8, "window": 8},
        ).model  # fmt: skip
        candles = load_candles(con, "KRW-BTC", "1")
        yield {"con": con, "xgboost": xgb, "lstm": lstm, "candles": candles, "home": home}
        con.close()


def windows_of(store: dict[str, Any], loaded: LoadedModel, n: int, back: int = 0) -> tuple:  # type: ignore[type-arg]
    """n real windows (n, context + 1, features) ending at the newest candles (`back` earlier),
    one per made-up market (named by its candle), with their keys."""
    features = compute_features(store["candles"], loaded.feature_spec, unit="1")
    X = features.to_numpy(dtype=np.float32)
    ends = np.arange(len(X) - n - back, len(X) - back)
    windows = np.stack([X[e - loaded.context : e + 1] for e in ends])
    assert np.isfinite(windows).all()
    keys = [(f"KRW-R{e}", "1", features.index[e]) for e in ends]
    return keys, windows


def probs(answer: np.ndarray | InferenceError) -> np.ndarray:
    assert isinstance(answer, np.ndarray), answer
    return answer


def counting(service: InferenceService, seen: list[int]):  # type: ignore[no-untyped-def]
    def call(loaded: LoadedModel, windows: np.ndarray) -> np.ndarray:
        seen.append(len(windows))
        return service.call(loaded, windows)

    return call


def test_a_model_is_loaded_once_for_every_market_and_the_predictor(store) -> None:  # type: ignore[no-untyped-def]
    con, record = store["con"], store["xgboost"]
    service = InferenceService(device="cpu")
    loaded = service.load(con, record, batch=6)
    assert service.load(con, record) is loaded and service.load_record(record) is loaded
    predictor = Predictor(inference=service)
    got, note = predictor.model(con, record.ref)
    assert got is loaded and note is None
    assert Predictor(inference=service).model(con, str(record.id))[0] is loaded

    # the Predictor's answer is the service's: a second face asking it makes no call
    first = predictor.predict(con, record.ref)
    calls = service.calls
    (cached,) = service.cached(loaded, [("KRW-BTC", "1", first.ts)])
    assert cached is not None and tuple(cached) == first.probabilities
    again = Predictor(inference=service).predict(con, record.ref)
    assert again.cached and again.probabilities == first.probabilities
    assert service.calls == calls and service.hits >= 1

    # the Workstation's predictor uses the Workstation's service
    ws = Workstation(con)
    assert ws.predictor().inference is ws.inference


@pytest.mark.parametrize("kind", ["xgboost", "lstm"])
def test_one_model_call_per_pass_answers_equal_the_models_own(store, kind: str) -> None:  # type: ignore[no-untyped-def]
    service = InferenceService(device="cpu")
    loaded = service.load(store["con"], store[kind], batch=6)
    assert service.calls == 0  # the warm-up is not counted
    keys, windows = windows_of(store, loaded, 6)
    seen: list[int] = []
    answers = service.predict(loaded, keys, windows, call=counting(service, seen))
    assert seen == [6] and service.calls == 1 and service.misses == 6
    for answer, window in zip(answers, windows, strict=True):
        assert isinstance(answer, np.ndarray)
        np.testing.assert_allclose(
            answer, loaded.model.predict_last(window), rtol=0, atol=TOLERANCE[kind]
        )

    # hits return without a call; the misses of a pass go in one call
    again = service.predict(loaded, keys, windows, call=counting(service, seen))
    assert all(a is b for a, b in zip(again, answers, strict=True))
    assert seen == [6] and service.hits == 6
    more_keys, more = windows_of(store, loaded, 6, back=2)  # 4 known, 2 new
    mixed = service.predict(loaded, more_keys, more, call=counting(service, seen))
    assert seen == [6, 2] and service.hits == 10 and service.calls == 2
    for answer, known in zip(mixed[2:], answers[:4], strict=True):
        assert answer is known

    # one window takes the single-row path: exactly predict_last
    single_key, single = windows_of(store, loaded, 1, back=20)
    (one,) = service.predict(loaded, single_key, single)
    assert isinstance(one, np.ndarray)
    np.testing.assert_array_equal(one, loaded.model.predict_last(single[0]))
    assert service.stats()["calls"] == 3


def test_a_rewritten_window_is_recomputed_never_served_stale(store) -> None:  # type: ignore[no-untyped-def]
    service = InferenceService(device="cpu")
    loaded = service.load(store["con"], store["xgboost"])
    keys, windows = windows_of(store, loaded, 1)
    (before,) = service.predict(loaded, keys, windows)
    changed = windows.copy()
    changed[0, -1] *= 1.5  # the same candle, rewritten
    (after,) = service.predict(loaded, keys, changed)
    assert service.calls == 2 and service.hits == 0
    assert isinstance(after, np.ndarray) and isinstance(before, np.ndarray)
    np.testing.assert_array_equal(after, loaded.model.predict_last(changed[0]))
    assert service.cached(loaded, keys, windows)[0] is None


class NanRowLSTM(LSTMModel):
    """A real LSTM whose batched output for the second window is NaN (a broken kernel)."""

    def _forward_all(self, w: np.ndarray, device: torch.device) -> torch.Tensor:
        out = super()._forward_all(w, device).clone()
        out[1] = float("nan")
        return out


def test_a_bad_row_fails_only_its_market(store) -> None:  # type: ignore[no-untyped-def]
    service = InferenceService(device="cpu")
    loaded = service.load(store["con"], store["lstm"], batch=4)
    keys, windows = windows_of(store, loaded, 4)
    holed = windows.copy()
    holed[2, 3, 0] = np.nan  # undefined features in market 2's window
    answers = service.predict(loaded, keys, holed)
    assert isinstance(answers[2], InferenceError) and "NaN" in str(answers[2])
    for i in (0, 1, 3):
        np.testing.assert_allclose(
            probs(answers[i]), loaded.model.predict_last(windows[i]), atol=1e-6
        )
    assert service.calls == 1

    # an output row that is not a distribution: that market's error, the others answered
    broken = LoadedModel(loaded.record, loaded.model, loaded.feature_spec)
    model = LSTMModel.__new__(NanRowLSTM)
    model.__dict__.update(loaded.model.__dict__)
    broken.model = model
    other = InferenceService(device="cpu")
    answers = other.predict(broken, keys, windows)
    assert isinstance(answers[1], InferenceError)
    assert "NaN or infinite probabilities" in str(answers[1])
    assert all(isinstance(answers[i], np.ndarray) for i in (0, 2, 3))
    assert other.cached(broken, keys)[1] is None and other.cached(broken, keys)[0] is not None


class SlowXGB(XGBoostModel):
    """A real XGBoost model that takes 0.3 s for a window."""

    def predict_last(self, X: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return super().predict_last(X)


def test_a_timeout_fails_the_pass_and_the_late_answer_is_cached(store) -> None:  # type: ignore[no-untyped-def]
    service = InferenceService(device="cpu", timeout=0.05)
    fast = service.load(store["con"], store["xgboost"])
    model = XGBoostModel.__new__(SlowXGB)
    model.__dict__.update(fast.model.__dict__)
    slow = LoadedModel(fast.record, model, fast.feature_spec)
    keys, windows = windows_of(store, slow, 1, back=5)
    (late,) = asyncio.run(service.predict_async(slow, keys, windows))
    assert isinstance(late, InferenceError)
    assert str(late) == "inference timed out after 0.05 s" and service.timeouts == 1
    deadline = time.monotonic() + 5
    while service.cached(slow, keys, windows)[0] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    (kept,) = service.cached(slow, keys, windows)
    np.testing.assert_array_equal(kept, fast.model.predict_last(windows[0]))
    calls = service.calls
    (hit,) = asyncio.run(service.predict_async(slow, keys, windows))
    assert hit is kept and service.calls == calls  # no call, no thread hop


class FailingCudaLSTM(LSTMModel):
    """A real LSTM that says its weights are on CUDA until moved: its first call fails as a
    call on a lost GPU does (its input goes to a device the weights are not on)."""

    pretend = True

    def _net_device(self) -> torch.device:
        return torch.device("cuda") if self.pretend else super()._net_device()

    def to_device(self, device: str) -> None:
        self.pretend = device.startswith("cuda")
        super().to_device("cpu")


def test_a_failing_cuda_call_moves_the_model_to_cpu_and_retries(store) -> None:  # type: ignore[no-untyped-def]
    service = InferenceService(device="cpu")
    plain = service.load(store["con"], store["lstm"])
    model = LSTMModel.__new__(FailingCudaLSTM)
    model.__dict__.update(plain.model.__dict__)
    broken = LoadedModel(plain.record, model, plain.feature_spec)
    other = InferenceService(device="cpu")
    assert other.device_of(broken) == "cuda"
    keys, windows = windows_of(store, broken, 3)
    answers = other.predict(broken, keys, windows)
    assert other.fallbacks == 1 and other.device_of(broken) == "cpu"
    note = other.note(broken)
    assert note is not None and "a call on cuda failed" in note and "moved to cpu" in note
    for answer, window in zip(answers, windows, strict=True):
        np.testing.assert_allclose(probs(answer), plain.model.predict_last(window), atol=1e-6)
    assert other.stats()["models"][0]["note"] == note


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_without_a_gpu_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        InferenceService(device="cuda")
    with pytest.raises(ValueError, match="choose auto, cpu or cuda"):
        InferenceService(device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_answers_equal_cpu_answers(store) -> None:  # type: ignore[no-untyped-def]
    cpu = InferenceService(device="cpu")
    cuda = InferenceService(device="cuda")
    on_cpu = cpu.load(store["con"], store["lstm"], batch=6)
    on_cuda = cuda.load(store["con"], store["lstm"], batch=6)
    assert on_cuda is not on_cpu and cuda.device_of(on_cuda).startswith("cuda")
    assert cpu.device_of(on_cpu) == "cpu"
    for n in (1, 6):
        keys, windows = windows_of(store, on_cpu, n)
        for a, b in zip(
            cpu.predict(on_cpu, keys, windows), cuda.predict(on_cuda, keys, windows), strict=True
        ):
            np.testing.assert_allclose(probs(a), probs(b), atol=1e-5)
    assert cuda.note(on_cuda) is None and cuda.fallbacks == 0
    # XGBoost stays on the CPU whatever the service's device
    trees = cuda.load(store["con"], store["xgboost"])
    assert cuda.device_of(trees) == "cpu"
