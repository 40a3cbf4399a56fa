"""Model artifacts encrypted at rest: AES-256-GCM (`cryptography`) under a key the user
configures, `UPQUANT_ARTIFACT_KEY` (base64 of 32 bytes) or `UPQUANT_ARTIFACT_KEY_FILE` (a file
holding that text, private to its owner as ssh wants of a private key).

An encrypted artifact is a small header, then the packed tar sealed under it:

    magic (8 bytes) | version (1) | key id (8) | nonce (12) | ciphertext and 16-byte tag

The nonce is fresh and random for every file; the whole header is the associated data, so
changing the version, key id or nonce fails authentication like changing the ciphertext does.
The key id (a hash of the key, which reveals nothing of it) lets a wrong key be named as such
before any decryption is tried, and lets `store check` say which key an artifact needs without
having it. The magic starts with a byte no artifact tar can start with (`\\x89` is not a
printable name), so a plain artifact is never mistaken for an encrypted one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ENV = "UPQUANT_ARTIFACT_KEY"
KEY_FILE_ENV = "UPQUANT_ARTIFACT_KEY_FILE"
KEY_BYTES = 32
MAGIC = b"\x89UQSEAL\n"
VERSION = 1
_HEADER = struct.Struct(">8sB8s12s")  # magic, version, key id, nonce
HEADER_BYTES = _HEADER.size
TAG_BYTES = 16
_KEY_ID_DOMAIN = b"upquant artifact key id v1\x00"
_SET_KEY = f"set {KEY_ENV} (base64 of 32 bytes) or {KEY_FILE_ENV} (a file holding it)"


class KeyConfigError(ValueError):
    """The configured artifact key cannot be used: malformed, of the wrong length, both
    variables set, or a key file that is missing, unreadable or readable by others."""

    def __init__(self, message: str, hint: str, variable: str = KEY_ENV) -> None:
        super().__init__(message)
        self.hint = hint
        self.variable = variable  # the setting to fix


class SealError(Exception):
    """An encrypted artifact cannot be opened: truncated, of an unknown format version, or a
    ciphertext that fails authentication under its own key."""


class KeyMismatch(SealError):
    """An encrypted artifact is intact as far as can be told, but no key is configured or
    the configured one is not the key it was written with."""


@dataclass(frozen=True)
class ArtifactKey:
    """A 32-byte AES-256 key and where it came from (for messages, never the key itself)."""

    secret: bytes
    source: str

    def __repr__(self) -> str:  # a key in a log or a traceback shows its id only
        return f"ArtifactKey(id={self.id}, source={self.source!r})"

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(_KEY_ID_DOMAIN + self.secret).digest()[:8]

    @property
    def id(self) -> str:
        """The key id in hex, as messages and `store check` show it."""
        return self.key_id.hex()


def new_key() -> str:
    """A new random key, as the base64 text the variables and key files hold."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_key(text: str, source: str, variable: str = KEY_ENV) -> ArtifactKey:
    """The key `text` (base64 of 32 bytes, surrounding whitespace ignored) holds; `source`
    names where it came from, `variable` the setting that gave it. KeyConfigError if it is
    not such a key."""
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(
            f"the artifact key in {source} is not base64",
            f"make a key with `upquant store keygen`; {_SET_KEY}",
            variable,
        ) from None
    if len(secret) != KEY_BYTES:
        raise KeyConfigError(
            f"the artifact key in {source} is {len(secret)} bytes, AES-256 needs {KEY_BYTES}",
            f"make a key with `upquant store keygen`; {_SET_KEY}",
            variable,
        )
    return ArtifactKey(secret, source)


def read_key_file(path: Path) -> ArtifactKey:
    """The key in the file at `path`, refused (KeyConfigError) if group or others may read
    or write it, as ssh refuses such a private key."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise KeyConfigError(
                f"the artifact key file {path} is not a regular file",
                f"point {KEY_FILE_ENV} at the file holding the key",
                KEY_FILE_ENV,
            )
        if mode & 0o077:
            raise KeyConfigError(
                f"the artifact key file {path} is {stat.filemode(mode)}: group or others may"
                " use it, so it is refused",
                f"run `chmod 600 {path}`",
                KEY_FILE_ENV,
            )
        text = path.read_text(encoding="ascii")
    except KeyConfigError:
        raise
    except FileNotFoundError:
        raise KeyConfigError(
            f"the artifact key file {path} ({KEY_FILE_ENV}) does not exist",
            f"make one: `upquant store keygen > {path} && chmod 600 {path}`",
            KEY_FILE_ENV,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyConfigError(
            f"the artifact key file {path} cannot be read: {exc}",
            f"point {KEY_FILE_ENV} at a readable file holding the key",
            KEY_FILE_ENV,
        ) from None
    return parse_key(text, f"{KEY_FILE_ENV} file {path}", KEY_FILE_ENV)


def configured_key() -> ArtifactKey | None:
    """The artifact key from the environment, or None when neither variable is set (artifacts
    are then written plain). KeyConfigError if what is set cannot be used."""
    text = os.environ.get(KEY_ENV) or None
    file = os.environ.get(KEY_FILE_ENV) or None
    if text and file:
        raise KeyConfigError(
            f"both {KEY_ENV} and {KEY_FILE_ENV} are set",
            "set only one of them",
        )
    if text:
        return parse_key(text, KEY_ENV)
    if file:
        return read_key_file(Path(file).expanduser())
    return None


def is_sealed(data: bytes) -> bool:
    """Whether `data` (an artifact file's bytes) is an encrypted artifact."""
    return data[: len(MAGIC)] == MAGIC


def sealed_key_id(data: bytes) -> str | None:
    """The id of the key an encrypted artifact was written with (hex), None if `data` is not
    one (or too short to hold a header)."""
    if not is_sealed(data) or len(data) < HEADER_BYTES:
        return None
    return str(_HEADER.unpack_from(data)[2].hex())


def seal(plain: bytes, key: ArtifactKey) -> bytes:
    """`plain` encrypted under `key` with a fresh random nonce, behind its header."""
    nonce = os.urandom(12)
    header = _HEADER.pack(MAGIC, VERSION, key.key_id, nonce)
    return header + AESGCM(key.secret).encrypt(nonce, plain, header)


def unseal(data: bytes, key: ArtifactKey | None, where: object) -> bytes:
    """The plain bytes of the encrypted artifact `data` (from `where`, named in messages):
    SealError if no key is configured, the key is not the one it was written with, its
    format version is unknown, or it fails authentication."""
    if len(data) < HEADER_BYTES + TAG_BYTES:
        raise SealError(f"artifact {where} is encrypted but truncated ({len(data)} bytes)")
    _magic, version, key_id, nonce = _HEADER.unpack_from(data)
    if version != VERSION:
        raise SealError(
            f"artifact {where} is encrypted with format version {version}; this upquant reads"
            f" version {VERSION}: upgrade upquant"
        )
    if key is None:
        raise KeyMismatch(
            f"artifact {where} is encrypted (key id {key_id.hex()}) and no artifact key is"
            f" configured: {_SET_KEY} to the key it was written with"
        )
    if key_id != key.key_id:
        raise KeyMismatch(
            f"artifact {where} was encrypted with key id {key_id.hex()}; the configured key"
            f" ({key.source}) has id {key.id}: set the key it was written with"
        )
    header = data[:HEADER_BYTES]
    try:
        return AESGCM(key.secret).decrypt(nonce, data[HEADER_BYTES:], header)
    except InvalidTag:
        raise SealError(
            f"artifact {where} fails authentication under key id {key.id}: it was altered"
            " after encryption and registered again, or upquant did not write it"
        ) from None
