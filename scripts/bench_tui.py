"""The workstation TUI as the user meets it: `upquant tui` started in a pseudo-terminal
(120x40, a real process, its output read and thrown away as a terminal would show it).

- startup: from starting `upquant tui --offline` (no server running: it hosts one) to its
  first useful screen drawn, the chart with its candles; then `upquant tui --markets` of
  200 markets to the Markets table filled. Runs after the first are warm (the OS's file
  cache, numba's and Python's caches); the first run's figure is shown apart.
- screen switch: with `upquant serve` running a 200-market replay (one pass of 200 closed
  candles and 200 signals per REPLAY_DELAY seconds, far above the live rate of one close
  per market per minute: the stream stands in for live tickers) and the TUI attached to it,
  a number key written to the terminal to the new screen drawn, p50 / p99.
- idle CPU: the attached TUI's own CPU time (/proc: user + system) over IDLE_S seconds of
  that stream, nothing pressed, as a share of one core.

The TUI says when it is ready and when a switched-to screen is drawn through its probe
(UPQUANT_TUI_READY=FILE: tui/app.py appends `EPOCH ready ...` and `EPOCH shown MODE`,
after the screen's refresh); both clocks are this machine's. A temporary store: real
KRW-BTC/KRW-ETH 1-minute candles (../shared/data), 198 more markets cut from the 4 real
series (at their own offsets, on one 1-minute clock), a small XGBoost champion of KRW-BTC.

    .venv/bin/python scripts/bench_tui.py [--quick]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchtable import Row, print_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "upbit"
SERIES = ("KRW-BTC_1m.csv", "KRW-ETH_1m.csv", "KRW-BTC_60m.csv", "KRW-ETH_60m.csv")
UPQUANT = str(Path(sys.executable).with_name("upquant"))
MARKETS = 200
STORED = 400  # 1-minute candles stored per market (the engine's window and the replay)
REPLAY_DELAY = 1.0  # seconds between the 200-market passes of the replay
IDLE_S = 10.0
SIZE = (40, 120)  # rows, columns
KEYS = "213141516171"  # switches: every screen from and to the Markets screen (the start)
MODES = dict(
    zip(
        "1234567",
        ("markets", "chart", "models", "training", "backtest", "signals", "portfolio"),
        strict=True,
    )
)


def _series(name: str) -> Any:
    import pandas as pd

    raw = pd.read_csv(DATA / name)
    frame = pd.DataFrame({"ts": pd.to_datetime(raw["timestamp"], utc=True)})
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = raw[col].astype("float64")
    return frame


def _store(home: str) -> list[str]:
    """The store (see the module docstring); the watchlist's market names."""
    import pandas as pd

    from engine.training.train import train_model
    from store.candles import upsert_candles
    from store.db import connect

    series = [_series(name) for name in SERIES]
    end = series[0]["ts"].iloc[-1]
    grid = pd.date_range(end=end, periods=STORED, freq="1min")
    con = connect()
    names = []
    for i in range(MARKETS):
        source = series[i % len(series)]
        market = ("KRW-BTC", "KRW-ETH")[i] if i < 2 else f"KRW-M{i:03d}"
        if i < 2:  # the real markets: their newest candles as they are (training rows too)
            part = source.iloc[-4000:].reset_index(drop=True)
            frame = part.assign(market=market, unit="1", value=float("nan"))
        else:  # a stretch of a real series at its own offset, on the shared clock
            offset = 5000 + (i // len(series)) * ((len(source) - 5000 - STORED) // 50)
            part = source.iloc[offset : offset + STORED].reset_index(drop=True)
            frame = part.assign(ts=grid, market=market, unit="1", value=float("nan"))
        upsert_candles(con, frame)
        names.append(market)
    params = {"n_estimators": 20, "max_depth": 3, "seed": 0, "device": "cpu"}
    train_model(con, "xgboost", "KRW-BTC", "1", params=params, promote=True)
    con.close()
    return names


class Terminal:
    """`upquant ARGS` in a pseudo-terminal; its output drained (a terminal shows it)."""

    def __init__(self, home: str, probe: str, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *SIZE, 0, 0))
        self.master, self.tail = master, b""
        env = {
            **os.environ,
            "UPQUANT_HOME": home,
            "TERM": "xterm-256color",
            "UPQUANT_TUI_READY": probe,
        }
        self.probe = Path(probe)
        self.probe.write_text("")
        self.started = time.time()
        self.process = subprocess.Popen(
            [UPQUANT, *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True, env=env
        )
        os.close(slave)

    def drain(self, seconds: float = 0.01) -> None:
        ready, _, _ = select.select([self.master], [], [], seconds)
        if ready:
            try:
                self.tail = (self.tail + os.read(self.master, 1 << 16))[-4096:]
            except OSError:
                time.sleep(seconds)

    def lines(self) -> list[tuple[float, str]]:
        out = []
        for line in self.probe.read_text().splitlines():
            stamp, _, text = line.partition(" ")
            out.append((float(stamp), text))
        return out

    def wait_line(self, prefix: str, after: int = 0, timeout: float = 120.0) -> tuple[float, str]:
        """The first probe line from index `after` starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            for stamp, text in lines[after:]:
                if text.startswith(prefix):
                    return stamp, text
            if self.process.poll() is not None:
                raise SystemExit(f"upquant exited {self.process.returncode}: {self.tail!r}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no {prefix!r} from the TUI in {timeout:.0f} s: {self.tail!r}")
            self.drain()

    def cpu_s(self) -> float:
        """The process's user + system CPU seconds so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.drain(min(0.05, max(0.0, end - time.monotonic())))

    def quit(self) -> int:
        os.write(self.master, b"\x1b")  # out of a text field, if one has the focus
        self.idle(0.5)
        os.write(self.master, b"q")
        deadline = time.monotonic() + 60
        while self.process.poll() is None and time.monotonic() < deadline:
            self.drain(0.05)
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait()
        os.close(self.master)
        return code


def _startup(home: str, probe: str, runs: int, *args: str) -> tuple[list[float], list[float]]:
    """Seconds from starting `upquant tui ARGS` to its first useful screen, and the CPU
    seconds its process had used by then (less moved by the machine's load), per run."""
    seconds, cpu = [], []
    for _ in range(runs):
        tui = Terminal(home, probe, "tui", *args)
        try:
            stamp, _text = tui.wait_line("ready")
            cpu.append(tui.cpu_s())
            seconds.append(stamp - tui.started)
        finally:
            tui.quit()
    return seconds, cpu


def _stream(tui: Terminal, quick: bool) -> list[Row]:
    """Idle CPU, then number keys to screens drawn, of the TUI attached to the stream."""
    tui.wait_line("ready")
    tui.idle(3.0)  # the first passes drawn
    before, started = tui.cpu_s(), time.monotonic()
    tui.idle(IDLE_S)
    cpu = (tui.cpu_s() - before) / (time.monotonic() - started)
    latencies, missed = [], []
    by_screen: dict[str, list[float]] = {}
    for key in KEYS * (1 if quick else 3):
        seen = len(tui.lines())
        sent = time.time()
        os.write(tui.master, key.encode())
        try:
            stamp, _ = tui.wait_line(f"shown {MODES[key]}", after=seen, timeout=5)
        except SystemExit:  # the key did not switch (a text field took it): Esc, go on
            missed.append(key)
            os.write(tui.master, b"\x1b")
            tui.idle(1.0)
            continue
        latencies.append((stamp - sent) * 1000)
        by_screen.setdefault(MODES[key], []).append(latencies[-1])
        tui.idle(0.25)
    latencies = latencies or [float("nan")]
    medians = ", ".join(f"{mode} {_pct(ms, 50):.0f}" for mode, ms in by_screen.items())
    rows: list[Row] = [
        (
            f"idle CPU of the attached TUI, {MARKETS} markets streaming, {IDLE_S:.0f} s",
            f"{cpu * 100:.1f} % of a core",
            "<= 10 %",
            cpu <= 0.10,
        ),
        (
            f"key to screen switch drawn, {MARKETS} markets streaming, p50 / p99"
            + f" ({len(latencies)} keys)",
            f"{_pct(latencies, 50):.1f} / {_pct(latencies, 99):.1f} ms",
            "p99 <= 50 ms",
            _pct(latencies, 99) <= 50.0,
        ),
    ]
    rows.append(("  median by the screen switched to, ms", medians, "-", None))
    worst = sorted(
        ((ms, mode) for mode, values in by_screen.items() for ms in values), reverse=True
    )[:4]
    rows.append(
        ("  the slowest switches, ms", ", ".join(f"{m} {ms:.0f}" for ms, m in worst), "-", None)
    )
    if missed:
        rows.append(("keys a text field took (no switch in 5 s)", " ".join(missed), "none", False))
    return rows


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def bench(quick: bool) -> list[Row]:
    home = tempfile.mkdtemp(prefix="upquant-bench-tui-")
    os.environ["UPQUANT_HOME"] = home
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    names = _store(home)
    probe = str(Path(home) / "probe.txt")
    rows: list[Row] = []
    runs = 2 if quick else 4
    chart, chart_cpu = _startup(home, probe, runs, "--offline", "--replay-delay", "0.25")
    warm, warm_cpu = chart[1:], chart_cpu[1:]
    rows.append(
        (
            f"startup to the chart with candles, warm, median / max ({len(warm)} runs)",
            f"{_pct(warm, 50):.2f} / {max(warm):.2f} s",
            "<= 2 s",
            max(warm) <= 2.0,
        )
    )
    rows.append(
        ("  its CPU time by then (user + system), median", f"{_pct(warm_cpu, 50):.2f} s", "-", None)
    )
    rows.append(("startup to the chart, first run", f"{chart[0]:.2f} s", "-", None))
    watch = ["--markets", ",".join(names), "--offline", "--replay-delay", "5"]
    board, board_cpu = _startup(home, probe, 2 if quick else 3, *watch)
    rows.append(
        (
            f"startup to the Markets table of {MARKETS} markets, warm, median",
            f"{_pct(board[1:], 50):.2f} s",
            "<= 2 s",
            _pct(board[1:], 50) <= 2.0,
        )
    )
    rows.append(
        (
            "  its CPU time by then (user + system), median",
            f"{_pct(board_cpu[1:], 50):.2f} s",
            "-",
            None,
        )
    )
    server = subprocess.Popen(
        [UPQUANT, "serve", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "UPQUANT_HOME": home},
    )
    try:
        while not (Path(home) / "server.json").exists():
            if server.poll() is not None:
                raise SystemExit(f"upquant serve exited {server.returncode}")
            time.sleep(0.1)
        stream = [
            "--markets",
            ",".join(names),
            "--offline",
            "--replay-delay",
            str(REPLAY_DELAY),
            "--replay-candles",
            str(STORED),
        ]
        tui = Terminal(home, probe, "tui", *stream)
        try:
            rows.extend(_stream(tui, quick))
        finally:
            code = tui.quit()
        rows.append(
            (
                "the attached TUI quits, the server still runs",
                f"exit {code}",
                "-",
                server.poll() is None,
            )
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    load = os.getloadavg()[0]
    rows.append(
        ("machine: 1-minute load average", f"{load:.1f} on {os.cpu_count()} CPUs", "-", None)
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and keys")
    args = parser.parse_args()
    footer = (
        "bench_tui: `upquant tui` in a pseudo-terminal (120x40), timed through its probe"
        f" (UPQUANT_TUI_READY); {MARKETS} markets replayed by `upquant serve`, a pass every"
        f" {REPLAY_DELAY:g} s"
    )
    print_table(bench(args.quick), footer)
