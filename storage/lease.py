"""Per-study leases and a registry of live runs, both on ``fcntl`` lock files inside the workspace.

Two guarantees the orchestration layer builds on:

* :func:`study_lease` -- one lock file per study key (a pseudonymous content digest, never a
  path or a name) under ``WORKSPACE/leases/``. While a run holds it, a second run that wants
  to ingest the same study waits (or gives up after ``timeout_s``). The kernel releases an
  ``fcntl`` lock when its process dies, so a ``kill -9`` never leaves a study locked.
* :class:`RunRegistry` -- every running flow holds a lock on ``WORKSPACE/runs/<run_id>.lock``
  for its whole life. A lock file that can be locked by somebody else belongs to a run whose
  process is gone without a clean exit: :meth:`RunRegistry.stale` lists them so the caller can
  mark those runs Crashed, then :meth:`RunRegistry.forget` removes them.

Only identifiers (digests, flow-run UUIDs, process ids) are written into these files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

_KEY = re.compile(r"^[A-Za-z0-9:_.-]{1,128}$")


class LeaseTimeout(TimeoutError):
    """The study lease could not be taken within the allowed time."""


def _check_key(key: str, what: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"{what} must be 1-128 characters of [A-Za-z0-9:_.-], got {key!r}")
    return key.replace(":", "_")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


@contextlib.contextmanager
def study_lease(workspace: str | os.PathLike, key: str, *, holder: dict[str, Any] | None = None,
                timeout_s: float = 3600.0, poll_s: float = 0.2) -> Iterator[dict[str, Any] | None]:
    """Hold the exclusive lease of one study while the body runs.

    Parameters
    ----------
    workspace : path-like
        Workspace root; the lock lives in ``workspace/leases/<key>.lock``.
    key : str
        Pseudonymous study key, e.g. the ``sha256:<hex>`` content fingerprint of the study.
    holder : dict, optional
        Identifiers of the holder (flow-run id, pid) written into the lock file for diagnosis.
    timeout_s : float, keyword-only
        Seconds to wait for another holder before raising :class:`LeaseTimeout`.
    poll_s : float, keyword-only
        Seconds between attempts while waiting.

    Yields
    ------
    dict or None
        The record a previous holder left behind if it died holding the lease (its process was
        killed), else ``None``.
    """
    if timeout_s < 0 or poll_s <= 0:
        raise ValueError(f"timeout_s must be >= 0 and poll_s > 0, got {timeout_s}, {poll_s}")
    folder = pathlib.Path(workspace) / "leases"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_check_key(key, 'study key')}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise LeaseTimeout(f"study {key} is being ingested by another run (waited {timeout_s:.0f} s)")
            time.sleep(poll_s)
        previous = _read_record(fd)
        _write_record(fd, {**(holder or {}), "pid": os.getpid(), "since": time.time()})
        try:
            yield previous
        finally:
            _write_record(fd, None)  # a clean release leaves an empty file: nobody died holding it
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"unreadable": True}


def _write_record(fd: int, record: dict[str, Any] | None) -> None:
    os.ftruncate(fd, 0)
    if record is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record, sort_keys=True).encode())
    os.fsync(fd)


class RunRegistry:
    """Lock files of the runs alive in one workspace (see the module docstring).

    Parameters
    ----------
    workspace : path-like
        Workspace root; lock files live in ``workspace/runs/``.
    """

    def __init__(self, workspace: str | os.PathLike):
        self.folder = pathlib.Path(workspace) / "runs"
        self._held: dict[str, int] = {}

    def enter(self, run_id: str) -> None:
        """Mark ``run_id`` alive for as long as this process lives or until :meth:`leave`."""
        name = _check_key(run_id, "run id")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # private by default (flow hooks run before ensure())
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.close(fd)
            raise RuntimeError(f"run {run_id} is already registered by a live process")
        _write_record(fd, {"run_id": run_id, "pid": os.getpid(), "since": time.time()})
        self._held[run_id] = fd

    def leave(self, run_id: str) -> None:
        """Clean exit of ``run_id``: remove its lock file."""
        fd = self._held.pop(run_id, None)
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{_check_key(run_id, 'run id')}.lock").unlink()
        os.close(fd)

    def stale(self) -> list[str]:
        """Run ids whose lock file is not held by any live process (their process died)."""
        found = []
        if not self.folder.is_dir():
            return found
        for path in sorted(self.folder.glob("*.lock")):
            run_id = path.stem
            if run_id in self._held:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if _try_lock(fd):
                    if _read_record(fd) is not None:  # empty: a run is just creating it
                        found.append(run_id)
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return found

    def forget(self, run_id: str) -> None:
        """Remove the lock file of a dead run (after it was marked Crashed)."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{_check_key(run_id, 'run id')}.lock").unlink()
