"""The command line under hostile input and unfriendly processes: user text never parsed as
markup, credentials never printed, interrupts and signals exit 128 + N and say so, `--json`
stays strict JSON when a command fails, and a locked or damaged store says what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import DATA
from tests.tui.test_cli import UPQUANT, upquant, upquant_many

HOSTILE = "odd[/]name[bold]"


def strict(text: str) -> object:
    """JSON as a strict parser reads it: Python's json accepts bare NaN/Infinity, we must not."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def imported(tmp_path: Path) -> Path:
    path = tmp_path / "btc.csv"
    pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=2000).to_csv(path, index=False)
    result = upquant(tmp_path, "data", "import", str(path), "--market", "KRW-BTC", "--unit", "1")
    assert result.returncode == 0, result.stderr
    return tmp_path


# --------------------------------------------------------------------------- markup


def test_a_model_name_with_markup_is_listed_and_shown_as_written(imported: Path) -> None:
    trained, listed, shown, missing = upquant_many(imported, [
        ["train", "xgboost", "KRW-BTC", "--n-estimators", "5", "--name", HOSTILE],
        ["models", "list"],
        ["models", "show", f"{HOSTILE}@1"],
        ["models", "show", "no[/]such"],
    ])  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith(f"{HOSTILE}@1 (id 1")
    assert listed.returncode == 0, listed.stderr
    assert f"{HOSTILE}@1" in listed.stdout
    assert shown.returncode == 0, shown.stderr
    assert missing.returncode == 1 and "no[/]such" in missing.stderr


def test_validation_labels_with_brackets_are_printed(tmp_path: Path) -> None:
    frame = pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=20)
    frame.loc[3, "open"] = frame.loc[3, "high"] * 2  # open outside [low, high]
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    result = upquant(tmp_path, "data", "import", str(path), "--market", "KRW-BTC", "--unit", "1")
    assert result.returncode == 0, result.stderr
    assert "open/close outside [low, high]" in result.stdout


# --------------------------------------------------------------------------- credentials


def test_credentials_in_configured_urls_never_appear(tmp_path: Path) -> None:
    env = {
        "UPQUANT_UPBIT_WS_URL": "ws://bob:s3cret@127.0.0.1:9/websocket/v1",
        "UPQUANT_UPBIT_REST_URL": "http://bob:s3cret@127.0.0.1:9?token=t0ken",
    }
    stream = upquant(tmp_path, "data", "stream", "KRW-BTC", "--for", "2", env=env)
    fetch = upquant(
        tmp_path, "data", "fetch", "KRW-BTC", "--since", "2025-09-01", "--until", "2025-09-02",
        env=env,
    )
    bad_uri = upquant(
        tmp_path, "data", "stream", "KRW-BTC", "--for", "1",
        env={"UPQUANT_UPBIT_WS_URL": "ws://bob:s3cret@[::1/x"},
    )
    for result in (stream, fetch, bad_uri):
        assert result.returncode == 1
        text = result.stdout + result.stderr
        assert "127.0.0.1" in text or "[::1" in text  # the URL is named...
        assert "s3cret" not in text and "t0ken" not in text  # ...without its secrets


def test_a_stream_that_never_connects_fails_with_a_hint(tmp_path: Path) -> None:
    env = {"UPQUANT_UPBIT_WS_URL": "ws://127.0.0.1:9/websocket/v1"}
    result = upquant(tmp_path, "data", "stream", "KRW-BTC", "--for", "2", "--json", env=env)
    assert result.returncode == 1
    report = strict(result.stdout)
    assert isinstance(report, dict) and "never connected" in report["error"] and report["hint"]
    assert "\nhint: check the network" in result.stderr


# `data stream` while a server owns the store (the server records it, this command follows):
# tests/tui/test_stream_via_server.py


# --------------------------------------------------------------------------- interrupts


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [UPQUANT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UPQUANT_HOME": str(home)},
        # a child of a non-interactive shell may inherit SIGINT ignored: start from default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


class Said:
    """A process's stdout and stderr read as it writes them (threads): a test waits for a
    line that says the command reached its main loop instead of sleeping a guessed time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((process.stdout, self.out), (process.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        lines.extend(stream)  # line by line, as the process writes them

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        """Until a line of stderr holds `text` (the process still running)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            assert self.process.poll() is None, "".join(self.err)
            assert time.monotonic() < deadline, f"no {text!r} in {''.join(self.err)!r}"
            time.sleep(0.05)

    def finish(self, timeout: float = 60.0) -> tuple[str, str]:
        """(stdout, stderr) once the process has exited."""
        self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=timeout)
        return "".join(self.out), "".join(self.err)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "name"),
    [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")],
)
def test_an_interrupted_command_exits_128_plus_the_signal_and_says_so(
    imported: Path, signum: int, code: int, name: str
) -> None:
    process = _start(
        imported, "run", "--market", "KRW-BTC", "--offline", "--replay-delay", "1"
    )
    said = Said(process)
    said.wait_for("REPLAY")  # imports done, the replay is playing
    process.send_signal(signum)
    _out, err = said.finish()
    assert process.returncode == code, err
    assert f"interrupted ({name})" in err.splitlines()[-1]


@pytest.mark.slow
def test_a_background_job_stops_on_sigterm_and_nohup_keeps_ignoring_sighup(imported: Path) -> None:
    """`upquant ... &` from a script starts with SIGINT ignored, `nohup` with SIGHUP ignored:
    SIGTERM still stops the command cleanly, and a hang-up still does not."""

    def background() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    process = subprocess.Popen(
        [UPQUANT, "run", "--market", "KRW-BTC", "--offline", "--replay-delay", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UPQUANT_HOME": str(imported)},
        preexec_fn=background,  # noqa: PLW1509
    )
    said = Said(process)
    said.wait_for("REPLAY")  # imports done, the replay is playing
    process.send_signal(signal.SIGHUP)
    time.sleep(2.0)
    assert process.poll() is None  # nohup's promise holds
    process.send_signal(signal.SIGTERM)
    _out, err = said.finish()
    assert process.returncode == 143, err
    assert err.splitlines()[-1] == "interrupted (SIGTERM)"


@pytest.mark.slow
def test_an_interrupted_stream_prints_its_summary_and_exits_130(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [UPQUANT, "data", "stream", "KRW-BTC"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "UPQUANT_HOME": str(tmp_path),
            "UPQUANT_UPBIT_WS_URL": "ws://127.0.0.1:9/websocket/v1",
        },
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    said = Said(process)
    said.wait_for("Upbit stream dropped")  # imports done, the feed is trying to connect
    process.send_signal(signal.SIGINT)
    out, err = said.finish()
    assert process.returncode == 130, err
    assert out.startswith("markets 1, frames 0")
    assert err.splitlines()[-1] == "interrupted (Ctrl-C)"


# --------------------------------------------------------------------------- --json


def test_json_output_is_strict_on_success_and_on_failure(imported: Path) -> None:
    # a backtest with no trade has n/a metrics (win rate, profit factor): null, not NaN
    failing = [
        ["models", "show", "nosuch", "--json"],
        ["backtest", "KRW-ETH", "--json"],
        ["train", "xgboost", "KRW-ETH", "--json"],
    ]
    done, *fails = upquant_many(imported, [
        ["backtest", "KRW-BTC", "--strategy", "sma-cross", "--fast", "500", "--slow", "900",
         "--json"],
        *failing,
    ])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert isinstance(strict(done.stdout), dict)
    assert "NaN" not in done.stdout and "Infinity" not in done.stdout
    for args, failed in zip(failing, fails, strict=True):
        assert failed.returncode == 1, args
        report = strict(failed.stdout)
        assert isinstance(report, dict) and report["error"], args
        assert failed.stderr.startswith("error:"), args


# --------------------------------------------------------------------------- store


def test_a_locked_store_names_the_holder_and_what_to_do(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "from store.db import connect; c = connect(); print('ok', flush=True); import time; time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "UPQUANT_HOME": str(tmp_path)},
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        result = upquant(tmp_path, "data", "status")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    first, hint = result.stderr.strip().splitlines()
    assert first.startswith("error: the store ") and f"(pid {holder.pid})" in first
    assert "from store.db import connect" in first  # the holder's command line
    assert hint.startswith("hint: wait for that command to finish or stop it")


def test_a_damaged_store_says_how_to_move_it_aside(tmp_path: Path) -> None:
    (tmp_path / "upquant.duckdb").write_bytes(os.urandom(64 * 1024))
    result = upquant(tmp_path, "models", "list")
    assert result.returncode == 1
    first, hint = result.stderr.strip().splitlines()
    assert first.startswith(f"error: the store {tmp_path / 'upquant.duckdb'} is damaged")
    assert hint.startswith(f"hint: move it aside (`mv {tmp_path / 'upquant.duckdb'}")
    assert "Traceback" not in result.stderr
