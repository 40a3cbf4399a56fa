"""The inference service: the one place the live engine and the prediction service load and
call models.

- Loaded models are cached by artifact sha256 (LRU) and shared by every market and face: a
  champion of 200 markets is loaded, verified (`inference.load_record` /
  `load_with_fallback` semantics) and warmed once.
- Each model runs on a device: `auto` (CUDA when torch sees a GPU), `cpu` or `cuda`. Torch
  networks are moved there at load. Tree models stay on the CPU whatever is asked: their
  live path is a compiled tree walk (tens of microseconds for a row, under a millisecond
  for 200), less than one transfer to a GPU and back. Asking `cuda` without a GPU is an
  error at construction (`models.devices.resolve_device`), never a silent CPU run. When a
  call on CUDA fails (out of memory, a driver error) the model is moved to the CPU, the call
  is retried there and `note(model)` says so, for the engine to publish.
- `predict(model, keys, windows)` answers a pass: hits from the answer cache first, keyed by
  (sha256, market, unit, ts) and checked against a digest of the window the answer was
  computed from (a rewritten candle or another history gives another window: recomputed,
  never stale), then ONE model call for all misses (one window takes the model's
  single-row fast path), each row validated as `inference.validate_probs` does: a bad row
  is its own key's InferenceError, never the others'. Only valid answers are cached.
- `predict_async` makes one thread hop for the misses within the per-pass timeout; on
  timeout every miss of the pass is InferenceError("inference timed out after X s"). The
  late call is not cancelled (a thread cannot be): it finishes and caches its answers, so a
  later pass, the API or the TUI asking the same candle gets them without a model call.
- Warm-up happens at load on both paths (one window, and a batch of the size the engine
  will use), never on the first candle.
- Counters (`stats()`): hits, misses, calls, model seconds, timeouts, CUDA fallbacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from engine.live.inference import (
    InferenceError,
    LoadedModel,
    load_record,
    load_with_fallback,
    validate_probs,
)
from models import EnsembleModel, Model
from models.devices import resolve_device
from store.artifacts import ArtifactError
from store.registry import ModelRecord

Key = tuple[Hashable, ...]  # (market, unit, ts)
Answer = np.ndarray | InferenceError
Call = Callable[[LoadedModel, np.ndarray], np.ndarray]


class _Lru(OrderedDict[Hashable, Any]):
    """A bounded mapping dropping the least recently used entry (callers hold the lock)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_fresh(self, key: Hashable) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def stacked_probs(model: Model, windows: np.ndarray) -> np.ndarray:
    """(n, 3) probabilities of the newest row of each of `windows` (n, rows, features), in one
    model call: a tabular model predicts the stacked newest rows (XGBoost in one compiled
    walk equal to its `predict_last` per row), a sequence model runs one forward over the
    stacked windows, an ensemble combines its members' stacked answers."""
    if model.context == 0:
        return np.asarray(model.predict_rows(windows[:, -1, :]), dtype=np.float64)
    if isinstance(model, EnsembleModel):
        parts = [
            stacked_probs(m, windows[:, windows.shape[1] - m.context - 1 :]) for m in model.members
        ]
        return np.asarray(model.combine(np.stack(parts, axis=1)), dtype=np.float64)
    net = getattr(model, "net_", None)
    if net is None:  # another kind with context: its own per-window path
        return np.stack([model.predict_last(w) for w in windows])
    return _sequence_probs(model, windows)


def _sequence_probs(model: Any, windows: np.ndarray) -> np.ndarray:
    """SequenceModel.predict_last for many windows at once (one forward over the batch)."""
    import torch

    from models.base import return_to_proba

    window = int(model.params["window"])
    sample = model.scaler_.transform(windows[:, -window:, :])
    out = model._forward_all(sample, model._net_device())
    if model.task == "regression":
        value = out[:, 0].numpy().astype(np.float64) * model.y_scale_ + model.y_mean_
        return np.asarray(return_to_proba(value, model.sigma_, float(model.params["threshold"])))
    probs = torch.softmax(out.double(), dim=1).numpy()
    return np.asarray(probs / probs.sum(axis=1, keepdims=True))


def raw_probs(model: Model, windows: np.ndarray) -> np.ndarray:
    """(n, 3) unvalidated probabilities for (n, context + 1, features) windows in one call;
    one window takes the model's single-row path (`predict_last`)."""
    if len(windows) == 1:
        return np.asarray(model.predict_last(windows[0]), dtype=np.float64)[None]
    return stacked_probs(model, windows)


def _networks(model: Model) -> list[Any]:
    """The torch models in `model` (itself, or an ensemble's members): what a device move
    moves."""
    if isinstance(model, EnsembleModel):
        return [net for member in model.members for net in _networks(member)]
    return [model] if getattr(model, "net_", None) is not None else []


def model_device(model: Model) -> str:
    """Where `model` computes: the device of its (first non-CPU) torch network, else cpu."""
    for net in _networks(model):
        device = str(net._net_device())
        if device != "cpu":
            return device
    return "cpu"


def _digest(window: np.ndarray) -> bytes:
    """What a cached answer was computed from (a C-contiguous float32 window), in 16 bytes:
    ~10 us for a 60-row window, no copy."""
    return hashlib.blake2b(memoryview(window).cast("B"), digest_size=16).digest()


@dataclass
class _Slot:
    """A loaded model's service state: its lock (one call or move at a time), the batch sizes
    it is warmed for and the last device note."""

    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    warmed: set[int] = field(default_factory=set)
    note: str | None = None


class InferenceService:
    """Cached models on their devices, cached validated answers, one model call per pass
    (see the module docstring); thread-safe."""

    def __init__(
        self,
        device: str = "auto",
        timeout: float = 1.0,
        *,
        models: int = 64,
        answers: int = 200_000,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"inference timeout must be positive seconds, not {timeout}")
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise ValueError(f"unknown inference device {device!r}; choose auto, cpu or cuda")
        # `cuda` without a GPU is refused now; `auto` is resolved when the first torch model
        # is placed (torch is loaded by then: a tree-only server never imports it)
        self._device = device if device in ("auto", "cpu") else resolve_device(device)
        self.timeout = float(timeout)
        self._models = _Lru(models)  # sha256 -> _Slot
        self._refused: dict[str, tuple[str, str]] = {}  # asked sha256 -> (loaded sha256, reason)
        self._answers = _Lru(answers)  # (sha256, *key) -> (window digest, probs)
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one artifact verified and loaded at a time
        self.hits = 0
        self.misses = 0
        self.calls = 0
        self.model_seconds = 0.0
        self.timeouts = 0
        self.fallbacks = 0

    @property
    def device(self) -> str:
        """The device models are placed on unless asked otherwise (`auto` resolved)."""
        if self._device == "auto":
            self._device = resolve_device("auto")
        return self._device

    # ------------------------------------------------------------------------------ models
    def load_record(
        self, record: ModelRecord, *, device: str | None = None, batch: int = 1
    ) -> LoadedModel:
        """`record`'s artifact exactly (ArtifactError if it is missing, truncated or altered),
        loaded once per sha256, placed on `device` (the service's by default) and warmed for
        one window and `batch` windows."""
        with self._lock:
            slot = self._models.get_fresh(record.sha256)
        if slot is None:
            with self._loading:
                with self._lock:
                    slot = self._models.get_fresh(record.sha256)
                if slot is None:
                    return self.adopt(load_record(record), device=device, batch=batch)
        self.warm(slot.loaded, batch)
        return slot.loaded  # type: ignore[no-any-return]

    def load_with_fallback(
        self,
        con: duckdb.DuckDBPyConnection,
        record: ModelRecord,
        *,
        device: str | None = None,
        batch: int = 1,
    ) -> tuple[LoadedModel | None, str]:
        """`inference.load_with_fallback` through the cache: `record` loaded, or else the
        first of its fallbacks that loads, with the reason saying which and why; a refused
        artifact is not retried while the service lives."""
        with self._lock:
            refused = self._refused.get(record.sha256)
            slot = self._models.get_fresh(refused[0] if refused else record.sha256)
        if slot is not None:
            self.warm(slot.loaded, batch)
            reason = refused[1] if refused else f"{record.status} {record.ref}"
            return slot.loaded, reason
        try:
            return self.load_record(record, device=device, batch=batch), (
                f"{record.status} {record.ref}"
            )
        except (ArtifactError, OSError, ValueError):
            pass
        with self._loading:
            loaded, reason = load_with_fallback(con, record)
        if loaded is None:
            return None, reason
        loaded = self.adopt(loaded, device=device, batch=batch)
        with self._lock:
            self._refused[record.sha256] = (loaded.record.sha256, reason)
        return loaded, reason

    def load(
        self,
        con: duckdb.DuckDBPyConnection,
        record: ModelRecord,
        *,
        device: str | None = None,
        batch: int = 1,
    ) -> LoadedModel:
        """`load_with_fallback`'s model (compare its `record.sha256` with the one asked to
        know whether an earlier one stands in), or ArtifactError saying why none loads."""
        loaded, reason = self.load_with_fallback(con, record, device=device, batch=batch)
        if loaded is None:
            raise ArtifactError(reason)
        return loaded

    def adopt(
        self, loaded: LoadedModel, *, device: str | None = None, batch: int = 1
    ) -> LoadedModel:
        """A model loaded elsewhere (`inference.load_ref`, a test) taken into the cache: the
        cached instance of its sha256 if there is one (`loaded` is then dropped), else
        `loaded` itself placed on `device` and warmed."""
        sha = loaded.record.sha256
        with self._lock:
            slot = self._models.get_fresh(sha)
            if slot is None:
                slot = _Slot(loaded)
                self._models.put(sha, slot)
                fresh = True
            else:
                fresh = False
        if fresh and _networks(slot.loaded.model):
            self.place(slot.loaded, self.device if device is None else resolve_device(device))
        self.warm(slot.loaded, batch)
        return slot.loaded

    def place(self, loaded: LoadedModel, device: str) -> str:
        """Move `loaded`'s torch networks to `device`; tree models stay on the CPU. Returns
        where it computes now; a failed move leaves it on the CPU with a note."""
        slot = self._slot(loaded)
        with slot.lock:
            nets = _networks(loaded.model)
            try:
                for net in nets:
                    net.to_device(device)
            except Exception as exc:  # noqa: BLE001 - a model that cannot move runs on the CPU
                for net in nets:
                    net.to_device("cpu")
                slot.note = (
                    f"{loaded.record.ref} could not be placed on {device}"
                    f" ({type(exc).__name__}: {exc}); running on cpu"
                )
            return model_device(loaded.model)

    def warm(self, loaded: LoadedModel, batch: int = 1) -> None:
        """One throwaway call on zero windows for one window and for `batch` windows (each
        size once per model), so the first live candle pays for no compiling or allocating."""
        if not loaded.columns:
            return
        slot = self._slot(loaded)
        for size in sorted({1, max(1, int(batch))} - slot.warmed):
            zeros = np.zeros((size, loaded.context + 1, len(loaded.columns)), np.float32)
            try:
                self._call(slot, zeros, count=False)
            except Exception:  # noqa: BLE001, S112 - a failing model fails again on its first candle, saying why
                continue
            slot.warmed.add(size)

    def device_of(self, loaded: LoadedModel) -> str:
        """Where `loaded` computes now (`cuda:0`, `cpu`)."""
        return model_device(loaded.model)

    def note(self, loaded: LoadedModel) -> str | None:
        """The last device event of `loaded` (moved to the CPU after a failed CUDA call, not
        placed where asked), None when it runs where it was placed."""
        with self._lock:
            slot = self._models.get(loaded.record.sha256)
        return None if slot is None else slot.note

    def _slot(self, loaded: LoadedModel) -> _Slot:
        """`loaded`'s state, created (unwarmed, not placed) for a model the cache dropped or
        never saw."""
        sha = loaded.record.sha256
        with self._lock:
            slot = self._models.get(sha)
            if slot is None or slot.loaded is not loaded:
                if slot is None:
                    slot = _Slot(loaded)
                    self._models.put(sha, slot)
                else:  # another instance of the same artifact: its own lock, shared answers
                    slot = _Slot(loaded)
            return slot  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------ calls
    def call(self, loaded: LoadedModel, windows: np.ndarray) -> np.ndarray:
        """(n, 3) raw probabilities for (n, context + 1, features) windows: ONE model call
        (counted), on the model's device, retried on the CPU when a CUDA call fails."""
        return self._call(self._slot(loaded), windows, count=True)

    def _call(self, slot: _Slot, windows: np.ndarray, *, count: bool) -> np.ndarray:
        model = slot.loaded.model
        with slot.lock:
            started = time.perf_counter()
            try:
                try:
                    probs = raw_probs(model, windows)
                except Exception as exc:
                    device = model_device(model)
                    if device == "cpu":
                        raise
                    for net in _networks(model):
                        net.to_device("cpu")
                    _empty_cuda_cache()
                    slot.note = (
                        f"{slot.loaded.record.ref}: a call on {device} failed"
                        f" ({type(exc).__name__}: {str(exc)[:200]}); moved to cpu"
                    )
                    with self._lock:
                        self.fallbacks += 1
                    probs = raw_probs(model, windows)
            finally:
                if count:
                    with self._lock:
                        self.calls += 1
                        self.model_seconds += time.perf_counter() - started
        if probs.shape != (len(windows), 3):
            raise InferenceError(
                f"model returned shape {probs.shape} for {len(windows)} windows, expected"
                f" ({len(windows)}, 3)"
            )
        return probs

    def predict(
        self,
        loaded: LoadedModel,
        keys: Sequence[Key],
        windows: np.ndarray,
        *,
        call: Call | None = None,
    ) -> list[Answer]:
        """Validated (3,) probabilities (read-only) or InferenceError per key, for windows
        (n, context + 1, features): cache hits first, then one model call for the misses.
        `call` replaces `self.call` for that call (the Predictor's hook)."""
        return [answer for answer, _ in self.predict_marked(loaded, keys, windows, call=call)]

    def predict_marked(
        self,
        loaded: LoadedModel,
        keys: Sequence[Key],
        windows: np.ndarray,
        *,
        call: Call | None = None,
    ) -> list[tuple[Answer, bool]]:
        """`predict`, each answer with whether it came from the cache."""
        windows = self._checked_windows(loaded, keys, windows)
        sha = loaded.record.sha256
        digests = [_digest(w) for w in windows]
        out: list[tuple[Answer, bool] | None] = [None] * len(keys)
        with self._lock:
            for i, key in enumerate(keys):
                entry = self._answers.get_fresh((sha, *key))
                if entry is not None and entry[0] == digests[i]:
                    out[i] = (entry[1], True)
            hits = sum(o is not None for o in out)
            self.hits += hits
            self.misses += len(keys) - hits
        todo = [i for i, o in enumerate(out) if o is None]
        finite = np.isfinite(windows[todo]).all(axis=(1, 2)) if todo else np.ones(0, bool)
        for i, ok in zip(todo, finite, strict=True):
            if not ok:
                out[i] = (InferenceError("the window holds NaN or infinite features"), False)
        todo = [i for i, ok in zip(todo, finite, strict=True) if ok]
        if todo:
            try:
                probs = (call or self.call)(loaded, windows[todo])
                failure = None
            except Exception as exc:  # noqa: BLE001 - any model-side failure: every miss says it
                probs, failure = None, f"model failed: {type(exc).__name__}: {exc}"
            fresh = []
            for j, i in enumerate(todo):
                if probs is None:
                    out[i] = (InferenceError(failure), False)
                    continue
                try:
                    answer = validate_probs(probs[j])
                except InferenceError as exc:
                    out[i] = (exc, False)
                    continue
                answer.setflags(write=False)
                out[i] = (answer, False)
                fresh.append(((sha, *keys[i]), (digests[i], answer)))
            with self._lock:
                for key, entry in fresh:
                    self._answers.put(key, entry)
        return out  # type: ignore[return-value]

    @staticmethod
    def _checked_windows(
        loaded: LoadedModel, keys: Sequence[Key], windows: np.ndarray
    ) -> np.ndarray:
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        need = loaded.context + 1
        if windows.ndim != 3 or len(windows) != len(keys) or windows.shape[1] < need:
            raise ValueError(
                f"{loaded.record.ref} reads windows of {need} feature rows: pass"
                f" ({len(keys)}, {need}, features) for {len(keys)} keys, not {windows.shape}"
            )
        if loaded.columns and windows.shape[2] != len(loaded.columns):
            raise ValueError(
                f"{loaded.record.ref} reads {len(loaded.columns)} features per row,"
                f" the windows hold {windows.shape[2]}"
            )
        return windows

    def cached(
        self, loaded: LoadedModel, keys: Sequence[Key], windows: np.ndarray | None = None
    ) -> list[np.ndarray | None]:
        """The cached answer per key (None where there is none), without a model call or a
        thread hop; with `windows`, only answers computed from those same windows."""
        sha = loaded.record.sha256
        digests = (
            None
            if windows is None
            else [_digest(w) for w in np.ascontiguousarray(windows, np.float32)]
        )
        out: list[np.ndarray | None] = []
        with self._lock:
            for i, key in enumerate(keys):
                entry = self._answers.get_fresh((sha, *key))
                ok = entry is not None and (digests is None or entry[0] == digests[i])
                out.append(entry[1] if ok else None)
        return out

    async def predict_async(
        self,
        loaded: LoadedModel,
        keys: Sequence[Key],
        windows: np.ndarray,
        timeout: float | None = None,
    ) -> list[Answer]:
        """`predict` off the event loop (one thread hop, none when every key is a hit),
        within `timeout` seconds (the service's by default). On timeout every answer not
        cached is InferenceError; the late call still caches its answers when it ends."""
        limit = self.timeout if timeout is None else timeout
        windows = self._checked_windows(loaded, keys, windows)
        known = self.cached(loaded, keys, windows)
        if all(k is not None for k in known):
            with self._lock:
                self.hits += len(keys)
            return [k for k in known if k is not None]
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self.predict, loaded, keys, windows), limit
            )
        except TimeoutError:
            with self._lock:
                self.timeouts += 1
            late = f"inference timed out after {limit:g} s"
            return [InferenceError(late) if k is None else k for k in known]

    def stats(self) -> dict[str, Any]:
        """Counters and the loaded models: hits, misses, calls, model_seconds, timeouts,
        fallbacks, and per model its ref, device and note."""
        with self._lock:
            slots = list(self._models.values())
            out: dict[str, Any] = {
                "device": self._device,
                "hits": self.hits,
                "misses": self.misses,
                "calls": self.calls,
                "model_seconds": self.model_seconds,
                "timeouts": self.timeouts,
                "fallbacks": self.fallbacks,
                "answers_cached": len(self._answers),
            }
        out["models"] = [
            {
                "ref": s.loaded.record.ref,
                "sha256": s.loaded.record.sha256,
                "device": model_device(s.loaded.model),
                "note": s.note,
            }
            for s in slots
        ]
        return out


def _empty_cuda_cache() -> None:
    """Give CUDA's cached blocks back after a failed call (an out-of-memory one above all)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001, S110 - best effort: the CPU retry does not need it
        pass
