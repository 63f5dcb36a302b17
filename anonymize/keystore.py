"""Where wrapped key material lives, and the master key that wraps it.

`KeyStore` is deliberately tiny and storage-agnostic: string names, opaque bytes. The
local `FileKeyStore` (one JSON file, atomic replace + fsync, flock between processes)
serves the embedded/demo setup; the streams worker backs the same interface with the
compacted `fleetcloak.keys` topic (put = publish the entry under its name as the
message key, delete = tombstone). Nothing stored is usable without the master key:
every value is AES-256-GCM wrapped, with the entry's name as associated data, so a
wrapped key copied to another name (tenant, epoch, subject) fails to unwrap.

Names used by keys.Keyring (all ASCII, no secrets in names):
  root/<scope>/<epoch>        wrapped 32-byte root secret; scope = tenant id or "service"
  shredded/<scope>/<epoch>    marker: that epoch was destroyed (crypto-shredding)
  subject/<tenant>/<subj_..>  wrapped per-subject controller-route salt
  erased/<tenant>/<subj_..>   marker: that subject was erased
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from .secret import Secret

log = logging.getLogger(__name__)

MASTER_KEY_ENV = "FLEETCLOAK_MASTER_KEY"
MASTER_KEY_FILE_ENV = "FLEETCLOAK_MASTER_KEY_FILE"
_WRAP_AAD = b"fleetcloak/v1/wrap|"


class KeyStoreError(Exception):
    """Base class of keystore and key-handling errors (messages never hold key bytes)."""


class MasterKeyMissing(KeyStoreError):
    pass


class KeyUnwrapError(KeyStoreError):
    pass


# --- the interface ------------------------------------------------------------------
@runtime_checkable
class KeyStore(Protocol):
    """Opaque bytes under string names. Implementations must make `put` durable before
    returning and `delete` final (a compacted topic: publish a tombstone).

    Optional, used when present: `put_if_absent(name, value) -> stored bytes`,
    `get_many(names) -> {name: bytes}` and `put_many_if_absent({name: bytes}) ->
    {name: stored bytes}` (the Keyring creates a batch's new subject salts with one
    call instead of one write each)."""

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, value: bytes) -> None: ...

    def delete(self, name: str) -> None: ...

    def names(self, prefix: str = "") -> list[str]: ...


class MemoryKeyStore:
    """A dict; for tests and for the worker's view of the keys topic."""

    def __init__(self, entries: Mapping[str, bytes] | None = None):
        self._d: dict[str, bytes] = dict(entries or {})
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes | None:
        return self._d.get(name)

    def put(self, name: str, value: bytes) -> None:
        with self._lock:
            self._d[name] = bytes(value)

    def delete(self, name: str) -> None:
        with self._lock:
            self._d.pop(name, None)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in list(self._d) if n.startswith(prefix))

    def put_if_absent(self, name: str, value: bytes) -> bytes:
        with self._lock:
            return self._d.setdefault(name, bytes(value))

    def get_many(self, names: list[str]) -> dict[str, bytes]:
        d = self._d
        return {n: d[n] for n in names if n in d}

    def put_many_if_absent(self, entries: dict[str, bytes]) -> dict[str, bytes]:
        with self._lock:
            return {n: self._d.setdefault(n, bytes(v)) for n, v in entries.items()}

    def __repr__(self) -> str:
        return f"MemoryKeyStore({len(self._d)} entries)"


class TableKeyStore:
    """A KeyStore over a table of the compacted `fleetcloak.keys` topic (message key ->
    wrapped value), for whoever reads that topic: the worker's pipeline, the CLIs.

    Reads come from the table. Writes (a root minted by `Keyring.prepare`, a subject's
    first controller salt, a destruction) change the table at once and are queued;
    `drain()` hands them over as (key, value or None) for the caller to publish (the
    worker sends them as outputs of the batch that made them, so they are delivered
    before that batch is committed; a CLI publishes them before it reports success).

    Several writers can write the same entry at once (two workers meeting one driver
    for the first time). Compaction keeps the last write, so `sync` adopts whatever the
    topic holds once it is read back, and says when a value in use changed or vanished:
    the Keyring must then drop its caches. The few records emitted under a losing value
    carry a pseudonym nobody can link to later ones: that fails safe (unlinkable).
    Roots are minted ahead by `Keyring.prepare` (`policy apply`, the retention
    housekeeping), so in practice only subject salts are ever written concurrently.
    """

    def __init__(self, entries: Mapping[bytes, bytes] | None = None) -> None:
        self._d: dict[str, bytes] = {}
        self._unseen: dict[str, bytes | None] = {}  # our writes not yet read back from the topic
        self._pending: list[tuple[str, bytes | None]] = []
        if entries:
            self.sync(entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._d)} entries, {len(self._pending)} pending)"

    # --- KeyStore -----------------------------------------------------------------
    def get(self, name: str) -> bytes | None:
        return self._d.get(name)

    def put(self, name: str, value: bytes) -> None:
        self._write(name, bytes(value))

    def delete(self, name: str) -> None:
        self._write(name, None)  # a tombstone even for a name we never saw: deletion is final

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._d if n.startswith(prefix))

    def put_if_absent(self, name: str, value: bytes) -> bytes:
        have = self._d.get(name)
        if have is not None:
            return have
        self._write(name, bytes(value))
        return bytes(value)

    def get_many(self, names) -> dict[str, bytes]:
        d = self._d
        return {n: d[n] for n in names if n in d}

    def put_many_if_absent(self, entries: Mapping[str, bytes]) -> dict[str, bytes]:
        return {n: self.put_if_absent(n, v) for n, v in entries.items()}

    # --- the topic side ---------------------------------------------------------------
    def _write(self, name: str, value: bytes | None) -> None:
        if value is None:
            self._d.pop(name, None)
        else:
            self._d[name] = value
        self._unseen[name] = value
        self._pending.append((name, value))

    @property
    def pending(self) -> list[tuple[str, bytes | None]]:
        return list(self._pending)

    def drain(self) -> list[tuple[bytes, bytes | None]]:
        """The writes made since the last drain, as (message key, value or None)."""
        out = [(n.encode(), v) for n, v in self._pending]
        self._pending.clear()
        return out

    def sync(self, entries: Mapping[bytes, bytes]) -> bool:
        """Adopt the topic's table. True when a value we were using changed or vanished
        (another writer won, an epoch was shredded, a subject erased): the Keyring must
        drop its caches then (`Keyring.invalidate()`)."""
        topic = {(k.decode() if isinstance(k, (bytes, bytearray)) else k): bytes(v)
                 for k, v in entries.items() if v is not None}
        changed = False
        for name, mine in list(self._unseen.items()):
            theirs = topic.get(name)
            if theirs == mine:
                del self._unseen[name]  # our write came back: the topic agrees
            elif theirs is not None:
                del self._unseen[name]  # someone else's write for the same name won
                changed = True
            elif mine is not None:
                topic[name] = mine      # ours is still on its way: keep using it
            # a tombstone of ours not yet read back: the name stays absent
        if not changed:
            changed = any(topic.get(name) != value for name, value in self._d.items())
        self._d = topic
        return changed


class FileKeyStore:
    """One JSON file `{"version": 1, "entries": {name: base64(value)}}`, mode 0600.

    Every write takes an exclusive flock on `<path>.lock`, re-reads the file, writes a
    temp file in the same directory, fsyncs it, renames it over the old one and fsyncs
    the directory: a crash leaves either the old or the new file, never half of one.
    Reads see what other processes committed (the file is small; callers cache).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self.path)!r})"

    def _read(self) -> dict[str, bytes]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            return {k: base64.b64decode(v) for k, v in doc["entries"].items()}
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeyStoreError(f"keystore file {self.path} is corrupt ({type(exc).__name__})") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, entries: dict[str, bytes]) -> None:
        doc = {"version": 1, "entries": {k: base64.b64encode(v).decode() for k, v in sorted(entries.items())}}
        data = json.dumps(doc, indent=1).encode()
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def get(self, name: str) -> bytes | None:
        return self._read().get(name)

    def put(self, name: str, value: bytes) -> None:
        with self._locked():
            entries = self._read()
            entries[name] = bytes(value)
            self._write(entries)

    def put_if_absent(self, name: str, value: bytes) -> bytes:
        """Store `value` unless `name` exists; return what is stored (one winner)."""
        with self._locked():
            entries = self._read()
            if name in entries:
                return entries[name]
            entries[name] = bytes(value)
            self._write(entries)
            return bytes(value)

    def get_many(self, names: list[str]) -> dict[str, bytes]:
        """Several entries with one read of the file."""
        entries = self._read()
        return {n: entries[n] for n in names if n in entries}

    def put_many_if_absent(self, entries: dict[str, bytes]) -> dict[str, bytes]:
        """Store every absent entry with one write; return what is stored for each name."""
        with self._locked():
            current = self._read()
            added = {n: bytes(v) for n, v in entries.items() if n not in current}
            if added:
                current.update(added)
                self._write(current)
            return {n: current[n] for n in entries}

    def delete(self, name: str) -> None:
        with self._locked():
            entries = self._read()
            if entries.pop(name, None) is not None:
                self._write(entries)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._read() if n.startswith(prefix))


# --- the master key ---------------------------------------------------------------
class MasterKey:
    """The AES-256-GCM key-wrapping key. Never stored in Kafka, never logged.

    `kid` is a short public fingerprint (an HMAC of a constant under the key), stored
    beside each wrapped value so a wrong master key is reported as such.
    """

    __slots__ = ("_secret", "kid", "ephemeral")

    def __init__(self, key: Secret | bytes, *, ephemeral: bool = False):
        secret = key if isinstance(key, Secret) else Secret(key, "master key")
        if len(secret) != 32:
            raise KeyStoreError(f"the master key must be 32 bytes, got {len(secret)}")
        self._secret = secret
        self.kid = hmac.new(secret.reveal(), b"fleetcloak/v1/kid", hashlib.sha256).hexdigest()[:12]
        self.ephemeral = ephemeral

    def __repr__(self) -> str:
        return f"MasterKey(kid={self.kid}{', ephemeral' if self.ephemeral else ''})"

    __str__ = __repr__

    @classmethod
    def from_base64(cls, text: str, source: str = "value") -> MasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyMissing(f"the master key in {source} is not valid base64") from None
        if len(raw) != 32:
            raise MasterKeyMissing(f"the master key in {source} decodes to {len(raw)} bytes; it must be 32")
        return cls(Secret(raw, "master key"))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> MasterKey:
        """A file holding base64 of 32 bytes (or exactly 32 raw bytes)."""
        data = Path(path).read_bytes()
        if len(data) == 32:  # base64 of 32 bytes is 44 characters, so no ambiguity
            return cls(Secret(data, "master key"))
        return cls.from_base64(data.decode("ascii", "replace"), f"key file {path}")

    @classmethod
    def generate(cls, *, ephemeral: bool = True) -> MasterKey:
        return cls(Secret(secrets.token_bytes(32), "master key"), ephemeral=ephemeral)

    @staticmethod
    def new_base64() -> str:
        """A fresh master key as the base64 text FLEETCLOAK_MASTER_KEY expects."""
        return base64.b64encode(secrets.token_bytes(32)).decode()

    def reveal(self) -> bytes:
        """The key bytes, for key derivation at the point of use only (never to log)."""
        return self._secret.reveal()

    # wrapping ------------------------------------------------------------------
    def wrap(self, name: str, secret: Secret) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        ct = AESGCM(self._secret.reveal()).encrypt(nonce, secret.reveal(), _WRAP_AAD + name.encode())
        doc = {"v": 1, "alg": "A256GCM", "kid": self.kid, "nonce": base64.b64encode(nonce).decode(), "ct": base64.b64encode(ct).decode()}
        return json.dumps(doc, separators=(",", ":")).encode()

    def unwrap(self, name: str, wrapped: bytes, label: str | None = None) -> Secret:
        """The secret stored under `name`. The name is the associated data: a value
        moved from another name (tenant, epoch, subject) or altered fails here."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            doc = json.loads(wrapped)
            nonce, ct = base64.b64decode(doc["nonce"]), base64.b64decode(doc["ct"])
            kid = doc.get("kid")
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise KeyUnwrapError(f"the wrapped key {name!r} is malformed (not a wrapped-key record)") from None
        if kid is not None and kid != self.kid:
            raise KeyUnwrapError(
                f"the wrapped key {name!r} was wrapped under another master key "
                f"(kid {kid}; this master key is kid {self.kid})"
            )
        try:
            raw = AESGCM(self._secret.reveal()).decrypt(nonce, ct, _WRAP_AAD + name.encode())
        except (InvalidTag, ValueError):
            raise KeyUnwrapError(
                f"the wrapped key {name!r} failed authentication: it was altered, or moved "
                "here from another tenant, epoch or subject"
            ) from None
        return Secret(raw, label or name)


def load_master_key(
    mode: str = "production",
    *,
    key_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> MasterKey:
    """The master key from `key_file`, $FLEETCLOAK_MASTER_KEY_FILE or $FLEETCLOAK_MASTER_KEY.

    mode "production" refuses to go on without one (MasterKeyMissing). mode "demo"
    generates an ephemeral key and says so: a warning, because anything wrapped under it
    is lost when the process exits.
    """
    env = os.environ if environ is None else environ
    if mode not in ("production", "demo"):
        raise ValueError(f"mode is 'production' or 'demo', not {mode!r}")
    path = key_file or env.get(MASTER_KEY_FILE_ENV)
    if path:
        try:
            return MasterKey.from_file(path)
        except OSError as exc:
            raise MasterKeyMissing(f"cannot read the master key file {path}: {exc.strerror}") from None
    if env.get(MASTER_KEY_ENV):
        return MasterKey.from_base64(env[MASTER_KEY_ENV], f"${MASTER_KEY_ENV}")
    if mode == "production":
        raise MasterKeyMissing(
            f"no master key: set ${MASTER_KEY_ENV} (base64 of 32 bytes, e.g. from "
            "`python -c 'import base64,secrets;print(base64.b64encode(secrets.token_bytes(32)).decode())'`) "
            f"or ${MASTER_KEY_FILE_ENV} / --master-key-file; production mode refuses to start without one"
        )
    key = MasterKey.generate(ephemeral=True)
    msg = (
        "demo mode: no master key configured, generated an ephemeral one "
        f"(kid {key.kid}); keys wrapped under it are unreadable after this process exits"
    )
    warnings.warn(msg, stacklevel=2)
    log.warning(msg)
    return key
