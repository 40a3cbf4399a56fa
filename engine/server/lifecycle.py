"""Where a running server says it is: `server.json` and the local token, under $UPQUANT_HOME.

The server writes `$UPQUANT_HOME/server.json` (URL, pid, host, start) once it is listening and
removes it when it stops; every face reads it to decide whether to talk to the server or open
the store itself. A server killed without cleanup (SIGKILL, a power cut) leaves the file
behind: `running_server` checks the recorded process is alive on this host and is the same
process (not a reused pid), and removes a stale file. `$UPQUANT_HOME/api-token` holds the
write-scope token the server made for the local faces. Both files are private (mode 0600)
and written atomically (a reader never sees half a file).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from store.db import home
from store.processes import Owner, gone, process_start

SERVER_FILE = "server.json"
TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class ServerInfo:
    """A running server: where it answers and which process it is."""

    url: str  # e.g. http://127.0.0.1:8765 (the port actually bound)
    pid: int
    host: str  # the machine (socket.gethostname()), not the bound address
    started: datetime  # UTC
    process: str | None = None  # store.processes.process_start of pid: tells a reused pid


def server_json_path(root: Path | None = None) -> Path:
    return (root or home()) / SERVER_FILE


def token_path(root: Path | None = None) -> Path:
    return (root or home()) / TOKEN_FILE


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temp file renamed over it), mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def this_server(url: str) -> ServerInfo:
    """The record of a server run by this process, answering at `url`."""
    pid = os.getpid()
    return ServerInfo(url, pid, socket.gethostname(), datetime.now(UTC), process_start(pid))


def write_server_info(info: ServerInfo, root: Path | None = None) -> Path:
    record = asdict(info) | {"started": info.started.isoformat()}
    path = server_json_path(root)
    write_private(path, json.dumps(record, indent=2) + "\n")
    return path


def read_server_info(root: Path | None = None) -> ServerInfo | None:
    """What server.json says (None without the file, or when it is not a server record)."""
    try:
        record = json.loads(server_json_path(root).read_text())
        started = datetime.fromisoformat(record["started"])
        return ServerInfo(
            url=str(record["url"]),
            pid=int(record["pid"]),
            host=str(record["host"]),
            started=started if started.tzinfo else started.replace(tzinfo=UTC),
            process=record.get("process"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def why_gone(info: ServerInfo) -> str | None:
    """Why the server `info` records is known not to run, or None while it may."""
    if info.host != socket.gethostname():
        return None  # another machine's process cannot be seen: trust the file
    reason = gone(Owner(info.pid, info.host, info.process), heartbeat=None)
    if reason is None and info.process is None:
        # no recorded process start: a process that started after the server did is not it
        started = _start_time(info.pid)
        if started is not None and started > info.started.timestamp() + 1:
            return f"its process {info.pid} on {info.host} is gone (the pid is reused)"
    return reason


def _start_time(pid: int) -> float | None:
    """A live process's start as a Unix time, from /proc (None where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def running_server(root: Path | None = None) -> ServerInfo | None:
    """The server that runs on this home, or None. A stale server.json (its process is gone,
    or its pid now belongs to another process) is removed."""
    info = read_server_info(root)
    if info is None:
        return None
    if why_gone(info) is not None:
        remove_server_info(info.pid, root)
        return None
    return info


def remove_server_info(pid: int | None = None, root: Path | None = None) -> None:
    """Remove server.json (only when it is still `pid`'s, when given: a server starting in
    the meantime keeps its own)."""
    path = server_json_path(root)
    if pid is not None:
        current = read_server_info(root)
        if current is not None and current.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_token(root: Path | None = None) -> str | None:
    """The local faces' token from $UPQUANT_HOME/api-token, or None."""
    try:
        token = token_path(root).read_text().strip()
    except OSError:
        return None
    return token or None


def write_token(secret: str, root: Path | None = None) -> Path:
    path = token_path(root)
    write_private(path, secret + "\n")
    return path
