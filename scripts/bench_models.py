"""Benchmark the model zoo and print one table (measured, target, ok).

Speed, on synthetic data of the sizes issue 5 names: XGBoost 500,000 rows x 60 features,
200 rounds (train time, single-row predict p50/p99 of the served compiled tree walk next to
XGBoost's own inplace_predict with 1 thread, batch rows/s); LSTM and
Transformer (2 layers, 64 hidden, window 60): epoch time on 100,000 windows, batch samples/s,
single-sample p50/p99 on the CPU with 1 thread, both of the bare network and of the served
path (`predict_last`: scaling, the window, softmax) next to the batch path the live engine
used before (`predict_proba(window)[-1]`, one padded window per row).

Serving optimisations, on the real KRW-BTC 1-minute candles (default feature and label
specs, chronological split): each torch model is trained once (--epochs), then compared
with int8 dynamic quantisation (LSTM/Linear layers) and global L1 magnitude pruning of its
weight matrices: test accuracy, log-loss and agreement with the original, served latency,
and size (state_dict bytes, and gzip bytes, where zeroed weights would show).

    .venv/bin/python scripts/bench_models.py [--quick] [--epochs 3] [--only speed,serving]
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.research.dataset import build_dataset, split_dataset
from engine.research.features import DEFAULT_SPEC
from engine.research.labels import LabelSpec
from engine.research.metrics import classification_metrics
from engine.research.splits import SplitSpec
from engine.training.batch import predict_rows
from models import create_model
from models.torch_base import SequenceModel, windows
from scripts.benchtable import Row, print_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit" / "KRW-BTC_1m.csv"
XGB_P99_MS = 0.5
TORCH_P99_MS = 1.0


def latency(fn: Callable[[], object], n: int = 2000) -> tuple[float, float]:
    """p50, p99 in ms of `fn` after a warm-up."""
    for _ in range(50):
        fn()
    times = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def state_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- speed


def bench_speed(quick: bool) -> list[Row]:
    rows, windows_n = (50_000, 10_000) if quick else (500_000, 100_000)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 60)).astype(np.float32)
    signal = X[:, :3].sum(axis=1)
    y = (signal > 0.5).astype(int) + (signal > -0.5)
    table: list[Row] = []

    split = int(rows * 0.8)
    torch.set_num_threads(2)
    start = time.perf_counter()
    xgb = create_model("xgboost", n_estimators=200, early_stopping_rounds=1000, device="cpu")
    xgb.fit(X[:split], y[:split], X[split:], y[split:])
    table.append(
        (
            f"xgboost train {rows:,}x60, 200 rounds (2 threads)",
            f"{time.perf_counter() - start:.1f} s",
            "-",
            None,
        )
    )
    xgb.booster_.set_param({"nthread": 1})
    one = X[:1]
    served = latency(lambda: xgb.predict_last(one))
    booster = latency(lambda: xgb.booster_.inplace_predict(one))
    table.append(
        (
            "xgboost single row, served predict_last (compiled tree walk) p50 / p99",
            f"{served[0]:.3f} / {served[1]:.3f} ms",
            f"p99 <= {XGB_P99_MS} ms",
            served[1] <= XGB_P99_MS,
        )
    )
    table.append(
        (
            "xgboost single row, XGBoost's inplace_predict (1 thread) p50 / p99",
            f"{booster[0]:.3f} / {booster[1]:.3f} ms",
            "-",
            None,
        )
    )
    xgb.booster_.set_param({"nthread": 0})
    start = time.perf_counter()
    xgb.predict_proba(X[split:])
    table.append(
        (
            "xgboost batch predict",
            f"{(rows - split) / (time.perf_counter() - start):,.0f} rows/s",
            "-",
            None,
        )
    )

    for kind in ("lstm", "transformer"):
        Xw, yw = X[: windows_n + 59], y[: windows_n + 59]
        model = create_model(kind, window=60, hidden=64, layers=2, epochs=1, device="cpu")
        torch.set_num_threads(2)
        start = time.perf_counter()
        model.fit(Xw, yw, Xw[:2000], yw[:2000])
        table.append(
            (
                f"{kind} epoch on {windows_n:,} windows (2 threads, incl. validation)",
                f"{time.perf_counter() - start:.1f} s",
                "-",
                None,
            )
        )
        start = time.perf_counter()
        model.predict_proba(Xw)
        table.append(
            (
                f"{kind} batch predict (2 threads)",
                f"{len(Xw) / (time.perf_counter() - start):,.0f} samples/s",
                "-",
                None,
            )
        )
        torch.set_num_threads(1)
        table += served_latency(kind, model, Xw[-60:])
    torch.set_num_threads(2)
    return table


def served_latency(label: str, model: SequenceModel, rows: np.ndarray) -> list[Row]:
    window = int(model.params["window"])
    sample = torch.from_numpy(np.array(windows(model.scaler_.transform(rows), window, pad=False)))
    net = model.net_.eval()
    with torch.inference_mode():
        n50, n99 = latency(lambda: net(sample), 1000)
    s50, s99 = latency(lambda: model.predict_last(rows), 1000)
    b50, b99 = latency(lambda: model.predict_proba(rows)[-1], 200)
    return [
        (
            f"{label} single sample, bare network p50 / p99 (1 thread)",
            f"{n50:.3f} / {n99:.3f} ms",
            "-",
            None,
        ),
        (
            f"{label} single sample, served predict_last p50 / p99 (1 thread)",
            f"{s50:.3f} / {s99:.3f} ms",
            f"p99 <= {TORCH_P99_MS} ms",
            s99 <= TORCH_P99_MS,
        ),
        (
            f"{label} single sample, old path predict_proba(window)[-1] p50 / p99",
            f"{b50:.3f} / {b99:.3f} ms",
            "-",
            None,
        ),
    ]


# --------------------------------------------------------------------------- serving


def quantised(model: SequenceModel) -> SequenceModel:
    out = copy.deepcopy(model)
    out.net_ = torch.ao.quantization.quantize_dynamic(
        out.net_, {nn.LSTM, nn.Linear}, dtype=torch.qint8
    )
    return out


def pruned(model: SequenceModel, amount: float) -> SequenceModel:
    """Global L1 magnitude pruning of every weight matrix, made permanent (zeros stay)."""
    out = copy.deepcopy(model)
    targets = [
        (module, name)
        for module in out.net_.modules()
        for name, param in list(module.named_parameters(recurse=False))
        if "weight" in name and param.dim() >= 2
    ]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return out


def bench_serving(epochs: int, quick: bool) -> list[Row]:
    raw = pd.read_csv(DATA)
    candles = pd.DataFrame(
        {"market": "KRW-BTC", "unit": "1", "ts": pd.to_datetime(raw["timestamp"], utc=True)}
    )
    for col in ("open", "high", "low", "close", "volume"):
        candles[col] = raw[col].astype("float64")
    candles["value"] = np.nan
    if quick:
        candles = candles.tail(12_000).reset_index(drop=True)
    data = build_dataset(candles, DEFAULT_SPEC, LabelSpec(), unit="1")
    split = split_dataset(data, SplitSpec())
    y_test = data.y[split.test]
    table: list[Row] = []
    for kind in ("lstm", "transformer"):
        torch.set_num_threads(2)
        start = time.perf_counter()
        base = create_model(kind, window=60, hidden=64, layers=2, epochs=epochs, device="cpu")
        base.fit(
            data.X[split.train],
            data.y[split.train],
            data.X[split.validation],
            data.y[split.validation],
        )
        trained = time.perf_counter() - start
        torch.set_num_threads(1)
        reference = predict_rows(base, data.X, split.test)
        rows = data.X[split.test[-1] - base.context : split.test[-1] + 1]
        variants = [
            ("fp32 (as trained)", base),
            ("int8 dynamic", quantised(base)),
            ("pruned 30 % (L1)", pruned(base, 0.3)),
            ("pruned 60 % (L1)", pruned(base, 0.6)),
        ]
        for name, model in variants:
            try:
                probs = predict_rows(model, data.X, split.test)
            except (RuntimeError, AttributeError, NotImplementedError) as exc:
                reason = f"fails: {type(exc).__name__}: {exc}"[:90]
                table.append((f"{kind} {name}", reason, "-", None))
                continue
            scores = classification_metrics(y_test, probs.argmax(1), probs)
            agree = float((probs.argmax(1) == reference.argmax(1)).mean())
            p50, p99 = latency(lambda model=model, rows=rows: model.predict_last(rows), 1000)
            blob = state_bytes(model.net_)
            table.append(
                (
                    f"{kind} {name}: test acc / log-loss / agrees with fp32",
                    f"{scores['accuracy']:.4f} / {scores['log_loss']:.4f} / {agree:.1%}",
                    "-",
                    None,
                )
            )
            table.append(
                (
                    f"{kind} {name}: served p50 / p99 (1 thread); state_dict / gzip",
                    f"{p50:.3f} / {p99:.3f} ms; {len(blob):,} / {len(zlib.compress(blob, 6)):,} B",
                    "-",
                    None,
                )
            )
        majority = np.bincount(y_test, minlength=3).max() / len(y_test)
        what = (
            f"{kind} trained {epochs} epochs on {len(split.train):,} rows"
            f" (test {len(split.test):,} rows, majority share {majority:.4f})"
        )
        table.append((what, f"{trained:.0f} s", "-", None))
    torch.set_num_threads(2)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument("--epochs", type=int, default=3, help="serving part: training epochs")
    parser.add_argument("--only", default="speed,serving")
    args = parser.parse_args()
    # torch.ao.quantization's deprecation notices: the measurement is what this prints
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    parts = set(args.only.split(","))
    table: list[Row] = []
    if "speed" in parts:
        table += bench_speed(args.quick)
    if "serving" in parts:
        table += bench_serving(args.epochs, args.quick)
    print_table(
        table, f"(torch {torch.__version__}, CPU, {torch.get_num_threads()} threads by default)"
    )


if __name__ == "__main__":
    main()
