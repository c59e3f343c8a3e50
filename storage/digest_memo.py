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

Nothing but numbers and digests is stored: no path, no name, nothing of the file's contents.
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

__all__ = ["DigestMemo", "RACY_SECONDS", "host_id"]

#: A file whose modification or status-change time is this close to the moment it was hashed
#: is not remembered (it may still be being written).
RACY_SECONDS = 2.0
_FILE = "file-digests.sqlite"
_BATCH = 500  # keys per SELECT (SQLite's default limit on host parameters is 32,766)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS digests (host TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, "
           "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, "
           "PRIMARY KEY (host, dev, ino)) WITHOUT ROWID")


def host_id() -> str:
    """A digest of this machine's id (``/etc/machine-id``, else the host name): PHI-free, stable across runs."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            text = pathlib.Path(candidate).read_text().strip()
            if text:
                return hashlib.sha256(b"medflow-host:" + text.encode()).hexdigest()[:16]
    return hashlib.sha256(b"medflow-host:" + os.uname().nodename.encode()).hexdigest()[:16]


def _racy(st: os.stat_result, now_ns: int) -> bool:
    return now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9


class DigestMemo:
    """Content digests of files, remembered under ``WORKSPACE/cache/`` by their ``stat`` (see module docstring).

    Parameters
    ----------
    workspace : path-like
        The workspace root (created folders are private, like the rest of the workspace).
    """

    def __init__(self, workspace: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(workspace) / "cache" / _FILE
        self.host = host_id()

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

    def lookup(self, stats: list[os.stat_result]) -> list[str | None]:
        """The remembered digest of each file described by ``stats`` (``None`` where unknown or changed)."""
        out: list[str | None] = [None] * len(stats)
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
                rows = con.execute(f"SELECT dev, ino, size, mtime_ns, ctime_ns, sha256 FROM digests "
                                   f"WHERE host = ? AND (dev, ino) IN (VALUES {marks})",
                                   [self.host, *(v for key in batch for v in key)]).fetchall()
                for dev, ino, size, mtime_ns, ctime_ns, digest in rows:
                    for i in wanted.get((dev, ino), ()):
                        st = stats[i]
                        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (size, mtime_ns, ctime_ns):
                            out[i] = digest
        except sqlite3.Error:
            return [None] * len(stats)
        finally:
            con.close()
        return out

    def record(self, items: Iterable[tuple[os.stat_result, str]]) -> int:
        """Remember ``(stat taken before the file was read, its hex SHA-256)`` pairs; returns how many were kept.

        Racily young files are skipped; a row of the same file (device and inode) is replaced.
        """
        now = time.time_ns()
        rows = [(self.host, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
                for st, digest in items if not _racy(st, now)]
        if not rows:
            return 0
        try:
            con = self._connect()
        except sqlite3.Error:
            return 0
        try:
            with con:
                con.execute("BEGIN IMMEDIATE")
                con.executemany("INSERT OR REPLACE INTO digests VALUES (?,?,?,?,?,?,?)", rows)
        except sqlite3.Error:
            return 0
        finally:
            con.close()
        return len(rows)
