"""Benchmark model operations (issue 11) and print one table (measure, measured, target, ok).

- shadow evaluation: a closed candle to its stored signal and to every prediction logged,
  with 0, 1 and 3 challengers in shadow (scripts/bench_ops_shadow.py);
- resolving the outcomes of 1M stored live predictions (target <= 2 s;
  scripts/bench_ops_resolve.py);
- an online update of an XGBoost champion on one day of 1-minute candles (target <= 5 s on
  CPU; scripts/bench_ops_online.py).

Each part runs on its own temporary store with the real candles of ../shared/data, and can
run alone. The promotion gate's false-promotion rate has its own benchmark:
scripts/bench_gate.py.

    .venv/bin/python scripts/bench_ops.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchtable import Row, print_table

PARTS = ("bench_ops_shadow", "bench_ops_resolve", "bench_ops_online")


_FIGURE = re.compile(r"^([\d.,]+)\s*(ms|s)\b")
_LIMIT = re.compile(r"^<=\s*([\d.,]+)\s*(ms|s)\b")


def judged(measured: str, target: str) -> bool | None:
    """Whether a row's figure meets its `<= N s` (or ms) target; None when it has none."""
    figure, limit = _FIGURE.match(measured), _LIMIT.match(target)
    if figure is None or limit is None or figure.group(2) != limit.group(2):
        return None
    return float(figure.group(1).replace(",", "")) <= float(limit.group(1).replace(",", ""))


def _part(name: str, quick: bool, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One part in its own process: its own store (UPQUANT_HOME) and a clean heap."""
    import importlib

    module = importlib.import_module(f"scripts.{name}")
    rows = [tuple(r) for r in module.bench(quick)]
    out.put([(*r, judged(r[1], r[2])) if len(r) == 3 else r for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    rows: list[Row] = []
    context = multiprocessing.get_context("spawn")
    for name in PARTS:
        out = context.Queue()
        process = context.Process(target=_part, args=(name, args.quick, out))
        process.start()
        part = None
        while part is None and (process.is_alive() or not out.empty()):
            try:
                part = out.get(timeout=1.0)
            except queue.Empty:
                continue
        process.join()
        if part is None or process.exitcode:
            raise SystemExit(f"{name} failed (exit {process.exitcode})")
        rows.extend(part)
    print_table(rows, "bench_ops: each part on its own temporary store, real candles")


if __name__ == "__main__":
    main()
