"""Benchmark the model zoo and print a table: XGBoost train time and predict latency, LSTM and
Transformer single-sample latency (1 thread), batch throughput, epoch time, and int8 dynamic
quantisation measured against the original. `--quick` shrinks every size for a smoke run."""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch

from models import create_model
from models.torch_base import windows


def _latency(fn, n: int = 2000) -> tuple[float, float]:
    for _ in range(50):
        fn()
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, windows_n = (50_000, 10_000) if args.quick else (500_000, 100_000)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 60)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0.5).astype(int) + (X[:, :3].sum(axis=1) > -0.5)
    table: list[tuple[str, str, str]] = []

    split = int(rows * 0.8)
    t = time.perf_counter()
    xgb = create_model("xgboost", n_estimators=200, early_stopping_rounds=1000, device="cpu")
    xgb.fit(X[:split], y[:split], X[split:], y[split:])
    table.append(("xgboost", f"train {rows:,}×60, 200 rounds", f"{time.perf_counter() - t:.1f} s"))
    xgb.booster_.set_param({"nthread": 1})
    one = X[:1]
    p50, p99 = _latency(lambda: xgb.predict_proba(one))
    table.append(("xgboost", "single-row predict p50 / p99", f"{p50:.3f} / {p99:.3f} ms"))
    xgb.booster_.set_param({"nthread": 0})
    t = time.perf_counter()
    xgb.predict_proba(X[split:])
    table.append(("xgboost", "batch rows/s", f"{(rows - split) / (time.perf_counter() - t):,.0f}"))

    for kind in ("lstm", "transformer"):
        Xw = X[: windows_n + 59, :60]
        yw = y[: windows_n + 59]
        model = create_model(
            kind, window=60, hidden=64, layers=2, epochs=1, device="cpu", patience=5
        )
        torch.set_num_threads(2)
        t = time.perf_counter()
        model.fit(Xw, yw, Xw[:2000], yw[:2000])
        table.append(
            (
                kind,
                f"epoch on {windows_n:,} windows (2 threads)",
                f"{time.perf_counter() - t:.1f} s",
            )
        )
        t = time.perf_counter()
        model.predict_proba(Xw)
        table.append((kind, "batch samples/s", f"{len(Xw) / (time.perf_counter() - t):,.0f}"))
        torch.set_num_threads(1)
        sample = torch.from_numpy(
            np.ascontiguousarray(windows(model.scaler_.transform(Xw[:60]), 60, pad=False))
        )
        net = model.net_.eval()
        with torch.inference_mode():
            p50, p99 = _latency(lambda net=net, sample=sample: net(sample), 1000)
        table.append(
            (kind, "single-sample p50 / p99 (1 thread, eager)", f"{p50:.3f} / {p99:.3f} ms")
        )
        with torch.inference_mode():
            base = net(
                torch.from_numpy(
                    np.ascontiguousarray(windows(model.scaler_.transform(Xw[:2000]), 60, pad=False))
                )
            ).argmax(1)
        try:
            quant = torch.ao.quantization.quantize_dynamic(
                net, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8
            )
            with torch.inference_mode():
                q50, q99 = _latency(lambda quant=quant, sample=sample: quant(sample), 1000)
                agree = float(
                    (
                        quant(
                            torch.from_numpy(
                                np.ascontiguousarray(
                                    windows(model.scaler_.transform(Xw[:2000]), 60, pad=False)
                                )
                            )
                        ).argmax(1)
                        == base
                    )
                    .float()
                    .mean()
                )
            size = lambda m: len(_state_bytes(m))
            table.append((kind, "int8 dynamic p50 / p99", f"{q50:.3f} / {q99:.3f} ms"))
            table.append(
                (
                    kind,
                    "int8 size / fp32 size, argmax agreement",
                    f"{size(quant):,} / {size(net):,} B, {agree:.1%}",
                )
            )
        except (RuntimeError, AttributeError, NotImplementedError) as exc:  # varies by build
            table.append((kind, "int8 dynamic", f"unavailable: {type(exc).__name__}: {exc}"[:80]))
        torch.set_num_threads(2)

    width = max(len(r[1]) for r in table)
    print(f"{'model':12} {'measure':{width}}  value")
    for kind, what, value in table:
        print(f"{kind:12} {what:{width}}  {value}")


def _state_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
