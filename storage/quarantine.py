"""Quarantine store: one JSON record per rejected input, named by the file's SHA-256.

Layout::

    WORKSPACE/quarantine/<sha256>.json

Records are named by content hash, never by file name (file names can hold PHI),
and hold only PHI-free fields:

``sha256``, ``reason`` (a code from :data:`storage.dicom.guard.REASON_CODES`),
``detail`` (a sentence written by medflow from checked numbers), ``exception_type``
(a type name, never an exception message), ``series_key`` (pseudonymous, may be
null), ``size`` (bytes, may be null), ``first_seen`` / ``last_seen`` (UTC ISO 8601),
``count`` (number of distinct runs that rejected the file; re-adding in the same
run, or with ``run_id=None`` once a record exists, changes nothing but
``last_seen``) and ``run_ids`` (the most recent :data:`MAX_RUN_IDS` run ids).

Writes are atomic (:func:`storage.workspace.write_text_atomic`) and serialised
between processes by an ``fcntl`` lock on ``quarantine/.lock``. Two byte-identical
files share one record (they are the same content). Reason codes from any stage are
accepted (the guard's :data:`storage.dicom.guard.REASON_CODES`, the converter's, ...);
a rejection without a file hash (the file could not be read, or a series-level
rejection) is kept as ``quarantine/unhashed-<digest>.json`` with ``sha256: null``.

:func:`locate` maps records back to the user's files by re-hashing a source folder;
its result is meant for the user's console only and is never written to the
workspace (relative paths can hold PHI).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

from storage.dicom.model import Rejection
from storage.workspace import sha256_file, write_text_atomic

__all__ = ["MAX_RUN_IDS", "QuarantineStore", "locate", "main"]

MAX_RUN_IDS = 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_REASON_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,80}$")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class QuarantineStore:
    """Records of rejected inputs under ``WORKSPACE/quarantine``.

    Parameters
    ----------
    workspace_root : path-like
        The workspace folder (the ``quarantine`` sub-folder is created on first write).
    """

    def __init__(self, workspace_root: str | os.PathLike[str]):
        self.root = pathlib.Path(workspace_root).expanduser().resolve() / "quarantine"

    def path_for(self, sha256: str) -> pathlib.Path:
        if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        return self.root / f"{sha256}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def add(self, rejection: Rejection, *, run_id: str | None) -> pathlib.Path:
        """Record ``rejection``; idempotent for the same run. Returns the record's path.

        ``rejection.reason`` is a code: the guard's (:data:`storage.dicom.guard.REASON_CODES`)
        or another stage's (``io_error``, ``rtstruct_no_contours``, ...); anything that is not
        a short code-like string is stored as ``"invalid_reason"``. A rejection without a
        file hash (``sha256`` empty: the file could not even be read, or a series-level
        rejection) is recorded under ``unhashed-<digest of reason, detail, exception type and
        series key>.json`` with ``sha256: null``; it cannot be located by :func:`locate`.
        Never raises for a bad rejection value (it is called inside the collection run).
        """
        if not isinstance(rejection, Rejection):
            raise TypeError(f"rejection must be a Rejection, got {type(rejection).__name__}")
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str or None, got {type(run_id).__name__}")
        reason = rejection.reason if isinstance(rejection.reason, str) and _REASON_RE.match(rejection.reason) \
            else "invalid_reason"
        sha = rejection.sha256 if isinstance(rejection.sha256, str) and _SHA_RE.match(rejection.sha256) else None
        if sha is None:
            ident = hashlib.sha256(json.dumps([reason, str(rejection.detail), rejection.exception_type,
                                               rejection.series_key]).encode()).hexdigest()
            path = self.root / f"unhashed-{ident}.json"
        else:
            path = self.path_for(sha)
        with self._locked():
            old = self._read(path)
            now = _now()
            run_ids: list[str] = list(old.get("run_ids") or []) if old else []
            count = int(old.get("count") or 0) if old else 0
            if old is None:
                count = 1
                if run_id is not None:
                    run_ids = [run_id]
            elif run_id is not None and run_id not in run_ids:
                count += 1
                run_ids = (run_ids + [run_id])[-MAX_RUN_IDS:]
            record = {
                "sha256": sha,
                "reason": reason,
                "detail": str(rejection.detail),
                "exception_type": rejection.exception_type,
                "series_key": rejection.series_key if rejection.series_key is not None
                else (old or {}).get("series_key"),
                "size": rejection.size if rejection.size is not None else (old or {}).get("size"),
                "first_seen": (old or {}).get("first_seen") or now,
                "last_seen": now,
                "count": count,
                "run_ids": run_ids,
            }
            write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    def add_many(self, rejections: Iterable[Rejection], *, run_id: str | None) -> list[pathlib.Path]:
        return [self.add(r, run_id=run_id) for r in rejections]

    @staticmethod
    def _read(path: pathlib.Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged record is rewritten from scratch
        return data if isinstance(data, dict) else None

    def get(self, sha256: str) -> dict[str, Any] | None:
        return self._read(self.path_for(sha256))

    def list(self) -> list[dict[str, Any]]:
        """All records, sorted by ``first_seen`` then ``sha256``."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.glob("*.json"):
            if not (_SHA_RE.match(p.stem) or p.stem.startswith("unhashed-")):
                continue
            rec = self._read(p)
            if rec is not None:
                out.append(rec)
        out.sort(key=lambda r: (str(r.get("first_seen") or ""), str(r.get("sha256") or "")))
        return out


def locate(source_root: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> list[tuple[str, dict]]:
    """Which files below ``source_root`` each quarantine record refers to.

    Re-hashes files (read-only) whose size matches a record (or every file when a
    record has no size). Returns ``(relative POSIX path, record)`` pairs sorted by
    path. For the user's console only: never write the result to the workspace.
    """
    root = pathlib.Path(source_root)
    if not root.is_dir():
        raise NotADirectoryError(f"source_root must be a directory, got {str(source_root)!r}")
    by_sha: dict[str, dict] = {}
    sizes: set[int] = set()
    any_size = False
    for rec in records:
        sha = rec.get("sha256")
        if not isinstance(sha, str):
            continue
        by_sha[sha] = rec
        size = rec.get("size")
        if isinstance(size, int):
            sizes.add(size)
        else:
            any_size = True
    out: list[tuple[str, dict]] = []
    if not by_sha:
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = pathlib.Path(dirpath) / name
            try:
                if not p.is_file():
                    continue
                if not any_size and p.stat().st_size not in sizes:
                    continue
                sha = sha256_file(p)
            except OSError:
                continue
            if sha in by_sha:
                out.append((p.relative_to(root).as_posix(), by_sha[sha]))
    out.sort(key=lambda t: t[0])
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m storage.quarantine WORKSPACE [SOURCE]``: list records (and the matching source files)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m storage.quarantine", description=main.__doc__)
    parser.add_argument("workspace")
    parser.add_argument("source", nargs="?", help="source folder to re-hash (printed here only)")
    args = parser.parse_args(argv)
    records = QuarantineStore(args.workspace).list()
    if args.source:
        for rel, rec in locate(args.source, records):
            print(f"{rel}\t{rec['reason']}\t{rec['detail']}")
    else:
        for rec in records:
            print(f"{rec['sha256'][:16]}\t{rec['reason']}\tcount={rec['count']}\t{rec['detail']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
