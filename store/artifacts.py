"""Content-addressed artifact files under `$UPQUANT_HOME/artifacts/`, verified before every load,
and their unpacked copies under `$UPQUANT_HOME/cache/`.

A model saves itself into a directory; the directory is packed into one deterministic tar
(sorted names, zero mtimes) named by its sha256. Loading re-hashes the file and refuses it
if it is missing, truncated or altered, then unpacks it itself: only the regular files with
plain relative names that our packer writes are accepted, all checked before anything is
written, into a fresh directory that replaces the cache entry atomically (a tar that is
hashed right can still be crafted; `tarfile`'s own filters have been bypassed). The registry
names an artifact relative to the store, so a moved or restored `$UPQUANT_HOME` keeps working.

With an artifact key configured (store/crypto.py) the tar is written encrypted, and the sha256
that names and verifies the file is that of the encrypted bytes: integrity is checked before
anything is decrypted, then decryption authenticates. Plain artifacts keep loading beside
encrypted ones. What is decrypted, where: an encrypted artifact's files are written, for the
time a load takes, into a fresh private directory (0700, files 0600) under `cache/`, and
removed once loaded (`unpacked_artifact`); a plain artifact's unpacked copy stays cached.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from store.crypto import (
    KeyConfigError,
    KeyMismatch,
    SealError,
    configured_key,
    is_sealed,
    seal,
    unseal,
)
from store.db import home

ARTIFACTS = "artifacts"
CACHE = "cache"
PART = ".part"  # suffix of everything written under a temporary name, then renamed
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(Exception):
    """An artifact is missing, truncated, does not match its recorded sha256, or cannot be
    unpacked and loaded as the model it claims to be."""


class ArtifactLocked(ArtifactError):
    """An encrypted artifact that is intact (its sha256 matches) but cannot be decrypted
    here: no artifact key is configured, the configured key is another one, or the key
    setting itself is unusable. Setting the right key opens it; nothing is wrong with it."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    size: int

    @property
    def ref(self) -> str:
        """How the registry names it: relative to `$UPQUANT_HOME`."""
        return artifact_ref(self.path)


def artifacts_dir() -> Path:
    path = home() / ARTIFACTS
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    path = home() / CACHE
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_ref(path: Path | str) -> str:
    """`path` as the registry stores it: relative to `$UPQUANT_HOME` when inside it (so the
    store can be moved or restored elsewhere), else unchanged."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(home().resolve()).as_posix()
    except ValueError:
        return str(path)


def artifact_path(ref: str | None, sha256: str) -> Path:
    """The file a registry row or an ensemble's member reference names, in the current store:
    a relative `artifacts/…` reference under `$UPQUANT_HOME`; anything else (an absolute path
    written before references were relative, perhaps by a store since moved or copied; no
    reference at all) by its sha256 in the current store's `artifacts/`."""
    if ref and not PurePosixPath(ref).is_absolute() and "\\" not in ref:
        parts = PurePosixPath(ref).parts
        if len(parts) == 2 and parts[0] == ARTIFACTS and parts[1] not in (".", ".."):
            return home().joinpath(*parts)
    return home() / ARTIFACTS / f"{sha256}.tar"


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


def _write_new(path: Path, data: bytes) -> None:
    """Write `path` under a temporary name beside it, synced, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_artifact(directory: Path) -> Artifact:
    """Pack `directory` and write it as `<sha256>.tar` atomically (temp file + rename),
    encrypted when an artifact key is configured (KeyConfigError if that setting cannot be
    used: nothing is written then). A file of that name is kept only if it still hashes
    right: a damaged one is rewritten, not registered again."""
    key = configured_key()
    data = _pack(directory)
    if key is not None:
        data = seal(data, key)  # a fresh nonce: the same model encrypts differently
    digest = hashlib.sha256(data).hexdigest()
    target = artifacts_dir() / f"{digest}.tar"
    if not _intact(target, digest, len(data)):
        _write_new(target, data)
    return Artifact(target, digest, len(data))


def _intact(path: Path, sha256: str, size: int) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return len(data) == size and hashlib.sha256(data).hexdigest() == sha256


def read_artifact(path: Path | str, sha256: str, size: int) -> bytes:
    """The bytes of the artifact at `path`, checked against the registry's size and sha256;
    ArtifactError if it is missing, unreadable, truncated or altered."""
    path = Path(path)
    if not _SHA256.fullmatch(sha256):
        raise ArtifactError(f"artifact {path}: the registry's sha256 {sha256!r} is not a sha256")
    if not path.exists():
        raise ArtifactError(f"artifact {path} is missing")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"artifact {path} cannot be read: {exc}") from exc
    if len(data) != size:
        raise ArtifactError(f"artifact {path} has {len(data)} bytes, registry says {size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ArtifactError(
            f"artifact {path} sha256 is {actual[:12]}…, registry says {sha256[:12]}…"
        )
    return data


def artifact_tar(data: bytes, where: Path | str) -> bytes:
    """The plain tar of an artifact file's verified bytes (`read_artifact`): `data` itself
    for a plain artifact, else decrypted with the configured key. ArtifactLocked if that key
    is missing, another one or unusable; ArtifactError if decryption fails to authenticate."""
    if not is_sealed(data):
        return data
    try:
        return unseal(data, configured_key(), where)
    except KeyMismatch as exc:
        raise ArtifactLocked(str(exc)) from None
    except KeyConfigError as exc:
        raise ArtifactLocked(
            f"artifact {where} is encrypted and the artifact key setting cannot be used: {exc};"
            f" {exc.hint}"
        ) from None
    except SealError as exc:
        raise ArtifactError(str(exc)) from None


def artifact_contents(path: Path | str, sha256: str, size: int) -> dict[str, bytes]:
    """The files of the artifact at `path` by relative name: its size and sha256 checked
    first, then decrypted if it is encrypted, then its tar checked (`artifact_files`)."""
    return artifact_files(artifact_tar(read_artifact(path, sha256, size), path), path)


def artifact_files(data: bytes, where: Path | str) -> dict[str, bytes]:
    """The files of an artifact tar, by relative name, refusing (ArtifactError) anything our
    packer does not write: links, directories, devices, fifos, sparse or odd members, absolute
    names, `..`, names that are not plain, duplicates, and a name that is also a directory."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise ArtifactError(
                        f"artifact {where} holds {_kind(info)} {info.name!r}:"
                        " an artifact holds regular files only"
                    )
                name = _plain_name(info.name, where)
                if name in files:
                    raise ArtifactError(f"artifact {where} holds {name!r} twice")
                reader = tar.extractfile(info)
                content = reader.read() if reader is not None else b""
                if len(content) != info.size:
                    raise ArtifactError(f"artifact {where}: {name!r} is truncated")
                files[name] = content
    except (tarfile.TarError, EOFError, ValueError) as exc:  # UnicodeError is a ValueError
        raise ArtifactError(f"artifact {where} is not a readable tar: {exc}") from exc
    directories = {str(parent) for name in files for parent in PurePosixPath(name).parents}
    clash = sorted(directories & files.keys())
    if clash:
        raise ArtifactError(f"artifact {where} holds {clash[0]!r} as a file and a directory")
    if not files:
        raise ArtifactError(f"artifact {where} holds no files")
    return files


def _kind(info: tarfile.TarInfo) -> str:
    for test, kind in (
        (info.issym, "a symlink"),
        (info.islnk, "a hardlink"),
        (info.isdir, "a directory"),
        (info.isdev, "a device or fifo"),
        (info.issparse, "a sparse file"),
    ):
        if test():
            return kind
    return f"a member of type {info.type!r}"


def _plain_name(name: str, where: Path | str) -> str:
    path = PurePosixPath(name)
    plain = (
        name
        and not path.is_absolute()
        and str(path) == name  # no `//`, `./`, trailing `/`
        and all(part not in (".", "..") for part in path.parts)
        and not any(c in name for c in "\\\x00")
        and all(c.isprintable() for c in name)
    )
    if not plain:
        raise ArtifactError(
            f"artifact {where} holds a file named {name!r}: not a plain relative name"
        )
    return name


def holds_exactly(directory: Path, files: dict[str, bytes]) -> bool:
    """Whether `directory` is a real directory holding exactly `files` and nothing else (no
    links, nothing extra), byte for byte."""
    try:
        if not directory.is_dir() or directory.is_symlink():
            return False
        found: set[str] = set()
        for root, dirs, names in os.walk(directory):
            for entry in (*dirs, *names):
                if (Path(root) / entry).is_symlink():
                    return False
            for entry in names:
                file = Path(root) / entry
                name = file.relative_to(directory).as_posix()
                if not file.is_file() or name not in files or file.read_bytes() != files[name]:
                    return False
                found.add(name)
        return found == files.keys()
    except OSError:
        return False


def unpack(files: dict[str, bytes], into: Path) -> Path:
    """Make `into` hold exactly `files`: kept if it already does, else written into a fresh
    directory beside it that then takes its place (never written into in place: an existing
    directory could hold planted links)."""
    if holds_exactly(into, files):
        return into
    into.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=into.parent, prefix=f".{into.name}.", suffix=PART))
    try:
        _write_files(fresh, files)
        _replace_dir(fresh, into, files)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return into


def _write_files(fresh: Path, files: dict[str, bytes]) -> None:
    """Write `files` into the new, empty, private directory `fresh` (files 0600, never
    through a link)."""
    for name, content in files.items():
        target = fresh.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(target, flags, 0o600), "wb") as handle:
            handle.write(content)


def _replace_dir(fresh: Path, into: Path, files: dict[str, bytes]) -> None:
    try:
        os.rename(fresh, into)  # `into` absent (or an empty directory): atomic
        return
    except OSError:
        if holds_exactly(into, files):  # another process unpacked the same artifact meanwhile
            shutil.rmtree(fresh, ignore_errors=True)
            return
    # a stale or tampered entry: moved aside whole (links and all), then removed
    old = Path(tempfile.mkdtemp(dir=into.parent, prefix=f".{into.name}.old.", suffix=PART))
    try:
        os.rename(into, old / "entry")
        os.rename(fresh, into)
    finally:
        shutil.rmtree(old, ignore_errors=True)  # never follows the links it removes


def open_artifact(path: Path | str, sha256: str, size: int, into: Path) -> Path:
    """Verify the artifact at `path` and unpack it as `into`; raises ArtifactError if it is
    bad or cannot be unpacked (nothing is written outside `into`). An encrypted artifact is
    decrypted into `into` too, which then holds it plain: loads use `unpacked_artifact`."""
    files = artifact_contents(path, sha256, size)
    try:
        return unpack(files, into)
    except OSError as exc:
        raise ArtifactError(f"artifact {path} cannot be unpacked into {into}: {exc}") from exc


@contextmanager
def unpacked_artifact(path: Path | str, sha256: str, size: int, into: Path) -> Iterator[Path]:
    """The verified artifact at `path` as a directory, for the time of a load: a plain one
    unpacked as `into` (a cache entry that stays, as `open_artifact`); an encrypted one
    decrypted into a fresh private directory beside `into`, removed on leaving, so no
    decrypted copy stays on disk (one left by a crash is a `.part` entry `store check --fix`
    removes). ArtifactError (ArtifactLocked for a key problem) if it cannot be opened."""
    data = read_artifact(path, sha256, size)
    if not is_sealed(data):
        files = artifact_files(data, path)
        try:
            directory = unpack(files, into)
        except OSError as exc:
            raise ArtifactError(f"artifact {path} cannot be unpacked into {into}: {exc}") from exc
        yield directory
        return
    files = artifact_files(artifact_tar(data, path), path)
    try:
        into.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(dir=into.parent, prefix=f".{into.name}.", suffix=PART))
    except OSError as exc:
        raise ArtifactError(f"artifact {path} cannot be unpacked beside {into}: {exc}") from exc
    try:
        try:
            _write_files(fresh, files)
        except OSError as exc:
            raise ArtifactError(f"artifact {path} cannot be unpacked into {fresh}: {exc}") from exc
        yield fresh
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def discard_artifact(path: Path | str, sha256: str) -> None:
    """Remove an artifact file no model uses any more, and its unpacked copy in the cache."""
    Path(path).unlink(missing_ok=True)
    if _SHA256.fullmatch(sha256):
        remove_tree(home() / CACHE / sha256)


def remove_tree(path: Path) -> None:
    """Remove a file, a link or a directory tree (links are removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
