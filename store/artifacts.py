"""Content-addressed artifact files under `$UPQUANT_HOME/artifacts/`, verified before every load.

A model saves itself into a directory; the directory is packed into one deterministic tar
(sorted names, zero mtimes) named by its sha256. Loading re-hashes the file and refuses it
if it is missing, truncated or altered.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from store.db import home


class ArtifactError(Exception):
    """An artifact is missing, truncated or does not match its recorded sha256."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    size: int


def artifacts_dir() -> Path:
    path = home() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(file.relative_to(directory)))
            data = file.read_bytes()
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def store_artifact(directory: Path) -> Artifact:
    """Pack `directory` and write it as `<sha256>.tar` atomically (temp file + rename)."""
    data = _pack(directory)
    digest = hashlib.sha256(data).hexdigest()
    target = artifacts_dir() / f"{digest}.tar"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    return Artifact(target, digest, len(data))


def open_artifact(path: Path | str, sha256: str, size: int, into: Path) -> Path:
    """Verify the artifact at `path` and unpack it into `into`; raises ArtifactError if bad."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"artifact {path} is missing")
    data = path.read_bytes()
    if len(data) != size:
        raise ArtifactError(f"artifact {path} has {len(data)} bytes, registry says {size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ArtifactError(
            f"artifact {path} sha256 is {actual[:12]}…, registry says {sha256[:12]}…"
        )
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(into, filter="data")
    return into
