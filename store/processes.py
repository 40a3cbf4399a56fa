"""Which process owns a job recorded in the store, and whether that process is gone.

A job row (a training run) records its owner: pid, host (`socket.gethostname()`) and the
process's start (Linux: boot id + start time in clock ticks from /proc, so a pid reused
after the owner died, or after a reboot, is not taken for it), and a heartbeat the owner
stamps as it progresses. On the same host the process table decides; another host's
process cannot be seen, so its job counts as gone once its heartbeat is older than
`HEARTBEAT_LIMIT`. A job killed by SIGKILL, the OOM killer or a dropped SSH session then
reads as interrupted instead of running forever.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Longer than any epoch, boosting report or trial is expected to take between heartbeats.
HEARTBEAT_LIMIT = timedelta(minutes=30)


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    start: str | None  # None where /proc is not available: the pid alone decides


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; None without /proc or the pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name (field 2) may hold spaces and ")"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """`BOOT_ID:TICKS` of a live process (field 22 of /proc/PID/stat), or None."""
    fields = _proc_stat(pid)
    return None if fields is None else f"{_boot_id()}:{fields[19]}"


def this_process() -> Owner:
    return Owner(os.getpid(), socket.gethostname(), process_start(os.getpid()))


def _running(pid: int) -> bool:
    """The pid is a live process (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")


def gone(
    owner: Owner | None, heartbeat: datetime | None, now: datetime | None = None
) -> str | None:
    """Why the owner of a job is known to be gone, or None while it may still run."""
    if owner is None:
        return "no process was recorded for it (a run from before owners were recorded)"
    if owner.host == socket.gethostname():
        if not _running(owner.pid):
            return f"its process {owner.pid} on {owner.host} is gone"
        if owner.start is not None and process_start(owner.pid) != owner.start:
            return f"its process {owner.pid} on {owner.host} is gone (the pid is reused)"
        return None
    now = now or datetime.now(UTC)
    if heartbeat is None or now - heartbeat > HEARTBEAT_LIMIT:
        seen = "never" if heartbeat is None else f"last at {heartbeat:%Y-%m-%d %H:%M:%S} UTC"
        minutes = int(HEARTBEAT_LIMIT.total_seconds() // 60)
        return (
            f"its process {owner.pid} on {owner.host} sent no heartbeat for over {minutes}"
            f" minutes ({seen})"
        )
    return None
