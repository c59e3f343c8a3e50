"""Keyed pseudonyms: patient/study/series/volume keys, date shifts and new UIDs.

Every pseudonym is a keyed hash (HMAC-SHA256) of the original identifier under one
secret, so the same input always gives the same pseudonym for a given secret and
nobody without the secret can recompute or reverse it. The way back from a
pseudonym to the original is the encrypted vault (:mod:`storage.vault`), never a
computation.

Where the secret comes from (:meth:`PseudonymKeys.from_env`):

1. the environment variable ``MEDFLOW_SECRET_KEY`` (at least 16 characters), else
2. the file ``$XDG_CONFIG_HOME/medflow/secret.key`` (or ``~/.config/medflow/secret.key``),
   created once with 32 random bytes and mode 0600. It lives in the user's config
   folder, *outside* every workspace, so copying or sharing a workspace never
   shares the secret. A warning names the file, never the secret.

Each use of the secret is domain-separated (``HMAC(secret, b"<domain>\\x00" + value)``),
so a patient key and a UID made from the same string are unrelated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pathlib
import secrets
import stat
import warnings
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV_VAR = "MEDFLOW_SECRET_KEY"
MIN_SECRET_CHARS = 16
#: inclusive range of the per-patient date shift, in days (always into the past)
DATE_SHIFT_RANGE = (-365, -1)
#: DICOM UID root for UUID-derived UIDs (PS3.5 B.2)
UUID_UID_ROOT = "2.25."


class SecretKeyWarning(UserWarning):
    """A secret key was generated and stored in the user's config folder."""


def default_secret_path(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """``$XDG_CONFIG_HOME/medflow/secret.key`` or ``~/.config/medflow/secret.key``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    root = pathlib.Path(base) if base else pathlib.Path.home() / ".config"
    return root / "medflow" / "secret.key"


def _read_or_create_secret_file(path: pathlib.Path) -> bytes:
    """Read the secret file, creating it (0600, exclusive create) when it does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_hex(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            warnings.warn(
                f"{ENV_VAR} is not set: generated a new secret key and stored it in {path} "
                "(mode 0600). Back this file up: without it pseudonyms cannot be reproduced "
                "and the vault cannot be opened.",
                SecretKeyWarning,
                stacklevel=3,
            )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"secret key file {path} is readable by group/others (mode {oct(mode)}); "
            "run `chmod 600` on it"
        )
    text = path.read_text(encoding="utf-8").strip()
    if len(text) < MIN_SECRET_CHARS:
        raise ValueError(f"secret key file {path} holds fewer than {MIN_SECRET_CHARS} characters")
    return text.encode("utf-8")


#: Kinds whose keys are made from the value with surrounding white space removed (DICOM pads
#: values to even length with a space, PS3.5 6.2; a damaged or re-padded copy differs only there).
STRIPPED_KINDS = frozenset({"patient", "study", "series"})


def canonical_original(kind: str, value: object) -> str:
    """The text a key of ``kind`` is made from, and under which the vault records ``value``.

    ``"PAT01 "`` and ``"PAT01"`` get one pseudonym, so they must be one original: the key
    functions and :class:`storage.vault.Vault` both go through here.
    """
    text = str(value)
    return text.strip() if kind in STRIPPED_KINDS else text


class PseudonymKeys:
    """All keyed pseudonym functions derived from one secret.

    Parameters
    ----------
    secret : bytes or str
        The secret (at least 16 characters/bytes). Use :meth:`from_env` in applications.
    """

    def __init__(self, secret: bytes | str):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, bytes | bytearray):
            raise TypeError(f"secret must be bytes or str, got {type(secret).__name__}")
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"secret must hold at least {MIN_SECRET_CHARS} bytes, got {len(secret)}")
        self._secret = bytes(secret)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PseudonymKeys:
        """Secret from ``MEDFLOW_SECRET_KEY``, else from (or newly created in) the user's config dir."""
        env = os.environ if env is None else env
        value = env.get(ENV_VAR)
        if value is not None and value != "":
            if len(value) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"{ENV_VAR} must hold at least {MIN_SECRET_CHARS} characters, got {len(value)}"
                )
            return cls(value)
        return cls(_read_or_create_secret_file(default_secret_path(env)))

    def __repr__(self) -> str:  # never shows the secret
        return f"PseudonymKeys(key_id={self.key_id()!r})"

    # -- primitives ----------------------------------------------------------------
    def _mac(self, domain: str, value: str) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"{domain} identifier must be str, got {type(value).__name__}")
        return hmac.new(self._secret, domain.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def derive_key(self, purpose: str, length: int = 32) -> bytes:
        """A sub-key for ``purpose`` (HKDF-SHA256 over the secret), e.g. the vault's encryption key."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"medflow-hkdf-v1",
                    info=purpose.encode()).derive(self._secret)

    def key_id(self) -> str:
        """A short public fingerprint of the secret (lets the vault detect a different key)."""
        return self._mac("key-id", "medflow").hex()[:12]

    @staticmethod
    def _b32(digest: bytes, n: int) -> str:
        return base64.b32encode(digest).decode("ascii").rstrip("=")[:n]

    # -- pseudonyms -----------------------------------------------------------------
    def patient_key(self, patient_id: str) -> str:
        """``"P" + base32(HMAC(secret, patient_id))[:10]`` (50 bits; e.g. ``"PK3QJ5WZ2AB"``)."""
        return "P" + self._b32(self._mac("patient", canonical_original("patient", patient_id)), 10)

    def partition_token(self, patient_id: str) -> str:
        """A 256-bit keyed token of ``patient_id`` (hex HMAC): equal tokens, same patient; never shown.

        What the workspace's digest memory (:mod:`storage.digest_memo`) keeps of a file's PatientID, so
        that the collection can group remembered files into patients without reading them again.
        """
        return self._mac("partition", patient_id).hex()  # the exact text: equal tokens exactly when equal IDs

    def study_key(self, study_uid: str) -> str:
        """``"S" + base32(HMAC(secret, study_uid))[:10]``."""
        return "S" + self._b32(self._mac("study", canonical_original("study", study_uid)), 10)

    def series_key(self, series_uid: str) -> str:
        """``"R" + base32(HMAC(secret, series_uid))[:10]``."""
        return "R" + self._b32(self._mac("series", canonical_original("series", series_uid)), 10)

    @staticmethod
    def volume_key(series_key: str, index: int) -> str:
        """Key of volume ``index`` of a series: ``f"{series_key}v{index}"`` (already pseudonymous)."""
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        if not series_key or not series_key.startswith("R"):
            raise ValueError(f"series_key must be a key from series_key(), got {series_key!r}")
        return f"{series_key}v{index}"

    def date_shift_days(self, patient_id: str) -> int:
        """Deterministic per-patient date shift in days, within ``DATE_SHIFT_RANGE`` = [-365, -1]."""
        lo, hi = DATE_SHIFT_RANGE
        n = int.from_bytes(self._mac("date-shift", canonical_original("patient", patient_id))[:8], "big")
        return lo + n % (hi - lo + 1)

    def new_uid(self, old_uid: str) -> str:
        """Deterministic replacement UID ``"2.25." + <decimal of a 128-bit UUID>`` (PS3.5 B.2).

        The 128 bits are the first 16 bytes of ``HMAC(secret, old_uid)`` with the RFC 9562
        version (8, custom) and variant bits set, so the value is a valid UUID; at most
        44 characters, no leading zero.
        """
        old = str(old_uid).strip().rstrip("\x00")
        b = bytearray(self._mac("uid", old)[:16])
        b[6] = (b[6] & 0x0F) | 0x80  # version 8
        b[8] = (b[8] & 0x3F) | 0x80  # variant 10xx
        return UUID_UID_ROOT + str(int.from_bytes(bytes(b), "big"))
