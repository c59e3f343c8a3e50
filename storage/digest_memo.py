"""The workspace's memory of source files' content digests, keyed by what ``stat`` says of them.

A cached rerun, or a run that adds patients to a source, must know the content digest of every
source file (the collection's cache key is made of them) but should not read and hash files it
has hashed before: on a cohort of thousands of patients that is the whole archive read again to
learn that nothing changed. As ``git`` does with its index, the digest of a file is remembered
with the file's identity and times, and reused only while they are all unchanged:

* the key is ``(host, device, inode)``; the row keeps ``size``, ``mtime_ns`` and ``ctime_ns``
  and the hex SHA-256. Any write to a file moves its status-change time (``ctime``, which user
  programs cannot set), so a changed file never matches its old row; a file replaced by another
  (new inode, or an inode reused later) does not match either;
* a file changed less than :data:`RACY_SECONDS` before it was hashed is not remembered ("racy
  git": file times follow the kernel's coarse clock, so a same-size rewrite within one tick would
  keep them), so a file still being written is hashed again on every run;
* ``host`` is a digest of the machine's id: a workspace on a shared folder, used from another
  machine, meets other devices and inodes there and only misses.

With each digest the row may keep the file's patient as a keyed token
(:meth:`storage.pseudonym.PseudonymKeys.partition_token`, a 256-bit HMAC under the workspace's
secret, with that secret's public ``key_id``), so that the collection can group remembered files
into patients without reading them; a token made under another secret is not handed out.
Nothing else is stored: no path, no name, no PatientID, nothing of the file's contents.
The memory is a cache: a database that cannot be opened, read or written is ignored (every file
is then hashed, as with no memory at all) and never fails a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import sqlite3
import time
from collections.abc import Iterable

__all__ = ["DigestMemo", "RACY_SECONDS", "host_id", "is_racy"]

#: A file whose modification or status-change time is this close to the moment it was hashed
#: is not remembered (it may still be being written).
RACY_SECONDS = 2.0
_FILE = "file-digests.sqlite"
_TABLE = "digests_v1"
_BATCH = 500  # keys per SELECT (SQLite's default limit on host parameters is 32,766)
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {_TABLE} (host TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, "
           "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, "
           "patient TEXT, key_id TEXT, PRIMARY KEY (host, dev, ino)) WITHOUT ROWID")


def host_id() -> str:
    """A digest of this machine's id (``/etc/machine-id``, else the host name): PHI-free, stable across runs."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            text = pathlib.Path(candidate).read_text().strip()
            if text:
                return hashlib.sha256(b"medflow-host:" + text.encode()).hexdigest()[:16]
    return hashlib.sha256(b"medflow-host:" + os.uname().nodename.encode()).hexdigest()[:16]


def is_racy(st: os.stat_result, *, now_ns: int, seconds: float) -> bool:
    """True when the file ``st`` describes changed less than ``seconds`` before ``now_ns`` (its digest is not kept)."""
    return now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < seconds * 1e9


class DigestMemo:
    """Content digests of files, remembered under ``WORKSPACE/cache/`` by their ``stat`` (see module docstring).

    Parameters
    ----------
    workspace : path-like
        The workspace root (created folders are private, like the rest of the workspace).
    key_id : str, optional
        The public id of the secret that made the patient tokens recorded and handed out here
        (:meth:`~storage.pseudonym.PseudonymKeys.key_id`); without it no token is recorded or handed out.
    """

    def __init__(self, workspace: str | os.PathLike[str], *, key_id: str | None = None) -> None:
        if key_id is not None and (not isinstance(key_id, str) or not key_id):
            raise ValueError(f"key_id must be a non-empty str or None, got {key_id!r}")
        self.path = pathlib.Path(workspace) / "cache" / _FILE
        self.host = host_id()
        self.key_id = key_id

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # a cache: a crash may lose the last rows, never corrupt
            con.execute(_SCHEMA)
        except BaseException:
            con.close()
            raise
        return con

    def lookup(self, stats: list[os.stat_result]) -> list[tuple[str, str | None] | None]:
        """``(digest, patient token or None)`` remembered for each file described by ``stats`` (``None`` where
        unknown or changed); a token is handed out only when it was made under this memo's ``key_id``."""
        out: list[tuple[str, str | None] | None] = [None] * len(stats)
        if not stats or not self.path.is_file():
            return out
        wanted: dict[tuple[int, int], list[int]] = {}
        for i, st in enumerate(stats):
            wanted.setdefault((st.st_dev, st.st_ino), []).append(i)
        keys = list(wanted)
        try:
            con = self._connect()
        except sqlite3.Error:
            return out
        try:
            for k in range(0, len(keys), _BATCH):
                batch = keys[k:k + _BATCH]
                marks = ",".join("(?,?)" for _ in batch)
                rows = con.execute(f"SELECT dev, ino, size, mtime_ns, ctime_ns, sha256, patient, key_id FROM {_TABLE} "
                                   f"WHERE host = ? AND (dev, ino) IN (VALUES {marks})",
                                   [self.host, *(v for key in batch for v in key)]).fetchall()
                for dev, ino, size, mtime_ns, ctime_ns, digest, patient, key_id in rows:
                    token = patient if self.key_id is not None and key_id == self.key_id else None
                    for i in wanted.get((dev, ino), ()):
                        st = stats[i]
                        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (size, mtime_ns, ctime_ns):
                            out[i] = (digest, token)
        except sqlite3.Error:
            return [None] * len(stats)
        finally:
            con.close()
        return out

    def record(self, items: Iterable[tuple[os.stat_result, str, str | None]]) -> int:
        """Remember ``(stat taken before the file was read, its hex SHA-256, patient token or None)``.

        Returns how many were kept: racily young files are skipped; a row of the same file (device and
        inode) is replaced. Tokens are kept only with a ``key_id``.
        """
        now = time.time_ns()
        rows = [(self.host, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest,
                 token if self.key_id is not None else None, self.key_id if token is not None else None)
                for st, digest, token in items if not is_racy(st, now_ns=now, seconds=RACY_SECONDS)]
        if not rows:
            return 0
        try:
            con = self._connect()
        except sqlite3.Error:
            return 0
        try:
            with con:
                con.execute("BEGIN IMMEDIATE")
                con.executemany(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.Error:
            return 0
        finally:
            con.close()
        return len(rows)
