"""The encrypted pseudonym vault: the only way back from a pseudonym to the original.

``WORKSPACE/vault/pseudonyms.enc`` holds one map ``kind -> {original: pseudonym}``
(kinds such as ``"patient"``, ``"study"``, ``"series"``, ``"study_uid"``) as JSON,
encrypted and authenticated with Fernet (AES-128-CBC + HMAC-SHA256) under a key
derived from the medflow secret with HKDF (:meth:`PseudonymKeys.derive_key`).
Nothing of the map is ever written in clear: the file is rewritten atomically
(temporary file with ciphertext only, fsync, rename) and writers are serialised
with an exclusive ``fcntl`` lock on ``vault/pseudonyms.lock`` (read-merge-write, so
concurrent processes never lose each other's entries).

File layout: one clear header line ``{"format": "medflow-vault", "version": 1,
"key_id": "<fingerprint>"}`` (the key fingerprint holds no secret; it lets a wrong
key be reported as such) followed by the Fernet token.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator

from cryptography.fernet import Fernet, InvalidToken

from storage.pseudonym import PseudonymKeys, canonical_original
from storage.workspace import Workspace, write_bytes_atomic

VAULT_DIR = "vault"
VAULT_FILE = "pseudonyms.enc"
LOCK_FILE = "pseudonyms.lock"
_FORMAT = "medflow-vault"
_VERSION = 1
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class VaultError(RuntimeError):
    """The vault cannot be read (wrong key, damaged file) or an entry conflicts."""


class Vault:
    """Encrypted original <-> pseudonym map of one workspace.

    Parameters
    ----------
    workspace : path-like or :class:`storage.workspace.Workspace`
        Workspace root; the vault lives in ``<workspace>/vault/``.
    keys : PseudonymKeys
        The medflow secret (the same one that made the pseudonyms).
    """

    def __init__(self, workspace, keys: PseudonymKeys):
        root = workspace.root if isinstance(workspace, Workspace) else workspace
        self.dir = pathlib.Path(root) / VAULT_DIR
        self.path = self.dir / VAULT_FILE
        self._keys = keys
        self._fernet = Fernet(base64.urlsafe_b64encode(keys.derive_key("medflow vault v1")))
        self._cache: dict[str, dict[str, str]] | None = None
        self._cache_stat: tuple[int, int, int] | None = None

    # -- file access -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, dict[str, str]]:
        st = self._stat()
        if st is None:
            self._cache, self._cache_stat = {}, None
            return {}
        if self._cache is not None and st == self._cache_stat:
            return self._cache
        raw = self.path.read_bytes()
        header_line, _, token = raw.partition(b"\n")
        try:
            header = json.loads(header_line)
        except ValueError as exc:
            raise VaultError(f"{self.path} is not a medflow vault (bad header)") from exc
        if header.get("format") != _FORMAT or header.get("version") != _VERSION:
            raise VaultError(f"{self.path} is not a medflow vault of version {_VERSION}")
        if header.get("key_id") != self._keys.key_id():
            raise VaultError(
                f"{self.path} was written with a different secret key (key id {header.get('key_id')}, "
                f"current {self._keys.key_id()}); set MEDFLOW_SECRET_KEY to the key that made it"
            )
        try:
            data = json.loads(self._fernet.decrypt(token.strip()))
        except InvalidToken as exc:
            raise VaultError(f"{self.path} failed authentication (damaged or wrong key)") from exc
        self._cache, self._cache_stat = data, st
        return data

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        header = json.dumps({"format": _FORMAT, "version": _VERSION, "key_id": self._keys.key_id()}).encode()
        token = self._fernet.encrypt(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
        write_bytes_atomic(self.path, header + b"\n" + token + b"\n")
        os.chmod(self.path, 0o600)
        self._cache, self._cache_stat = data, self._stat()

    # -- API -----------------------------------------------------------------------------
    @staticmethod
    def _check_kind(kind: str) -> None:
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise ValueError(f"kind must match {_KIND_RE.pattern}, got {kind!r}")

    def record(self, kind: str, original: str, pseudonym: str) -> None:
        """Store ``original -> pseudonym`` under ``kind`` (idempotent)."""
        self.record_many(kind, [(original, pseudonym)])

    def record_many(self, kind: str, pairs: Iterable[tuple[str, str]]) -> int:
        """Store many ``(original, pseudonym)`` pairs in one locked rewrite; returns how many were new.

        Originals are recorded as their keys are made (:func:`storage.pseudonym.canonical_original`):
        a patient ID with and without DICOM's trailing pad space is one patient.

        Raises
        ------
        VaultError
            When an original is already mapped to a different pseudonym or a pseudonym
            to a different original (the message names no value).
        """
        self._check_kind(kind)
        pairs = [(canonical_original(kind, o), str(p)) for o, p in pairs]
        with self._locked(exclusive=True):
            data = self._read()
            table = dict(data.get(kind, {}))
            reverse = {p: o for o, p in table.items()}
            new = 0
            for original, pseudonym in pairs:
                old = table.get(original)
                if old is not None and old != pseudonym:
                    raise VaultError(f"vault conflict in kind {kind!r}: an original already has another pseudonym")
                other = reverse.get(pseudonym)
                if other is not None and other != original:
                    raise VaultError(f"vault conflict in kind {kind!r}: pseudonym {pseudonym!r} already "
                                     "belongs to another original")
                if old is None:
                    table[original] = pseudonym
                    reverse[pseudonym] = original
                    new += 1
            if new:
                out = dict(data)
                out[kind] = table
                self._write(out)
            return new

    def lookup_pseudonym(self, kind: str, original: str) -> str | None:
        """The pseudonym recorded for ``original``, or None."""
        self._check_kind(kind)
        with self._locked(exclusive=False):
            return self._read().get(kind, {}).get(canonical_original(kind, original))

    def reidentify(self, kind: str, pseudonym: str) -> str | None:
        """The original behind ``pseudonym`` (the only way back), or None when unknown."""
        self._check_kind(kind)
        with self._locked(exclusive=False):
            for original, p in self._read().get(kind, {}).items():
                if p == pseudonym:
                    return original
        return None

    def kinds(self) -> dict[str, int]:
        """Number of entries per kind (no values)."""
        with self._locked(exclusive=False):
            return {k: len(v) for k, v in self._read().items()}
