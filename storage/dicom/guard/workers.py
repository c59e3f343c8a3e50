"""Bounded decode workers: sample-decode compressed pixel data in capped, killable processes."""

from __future__ import annotations

import contextlib
import errno
import mmap
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import time
import warnings
from collections import deque
from collections.abc import Iterable
from typing import Any

from storage.dicom.bugs import IngestBugError, innermost_location, is_bug
from storage.dicom.guard.common import (
    _READY,
    _START_TIMEOUT_S,
    GuardLimits,
    _silenced,
)
from storage.dicom.guard.inspect import (
    FileInspection,
)

# --------------------------------------------------------------------------- bounded worker


def _vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        return 0


#: allocations of at least this many bytes get a mapping of their own in a decode worker
_MMAP_THRESHOLD_BYTES = 128 << 10


def _own_mappings_for_large_blocks() -> None:
    """Make every large allocation a new mapping (glibc), so that ``RLIMIT_AS`` bounds it.

    glibc raises its mmap threshold each time a large mapped block is freed; in a process that
    imported much (the worker server is shared with the collection's unit workers, whose
    preload is large) a decoder's megabytes could then come from free heap space already
    mapped, growing nothing the address-space cap sees. A fixed threshold turns that off (not
    glibc: the frame reserve still bounds a frame). One arena: the worker decodes on one thread.
    """
    from storage.memory import configure_allocator

    configure_allocator(mmap_threshold=_MMAP_THRESHOLD_BYTES, arena_max=1)


def _worker_main(conn: multiprocessing.connection.Connection, allowance: int) -> None:
    """Bounded decode worker: address space capped at baseline + ``allowance``; exits on MemoryError."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numpy  # noqa: F401
        import pydicom.pixels  # noqa: F401  (imports the decoder plugins before the cap)
    _own_mappings_for_large_blocks()
    baseline = _vm_bytes()
    if baseline:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = baseline + allowance
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    conn.send(_READY)  # start-up finished: the parent treats a worker that never says so as a bug
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = _decode_sample(**task)
        except MemoryError as exc:
            conn.send({"reason": "memory_limit", "detail": "decoding a sample frame exceeded the memory limit",
                       "exception_type": type(exc).__name__})
            return  # a fresh worker replaces this one
        except RecursionError as exc:
            result = {"reason": "nesting_too_deep", "detail": "decoding exceeded the recursion limit",
                      "exception_type": type(exc).__name__}
        except BaseException as exc:  # noqa: BLE001 - report, never die silently
            if is_bug(exc):  # medflow's own code failed: the parent fails the run, nothing is quarantined
                result = {"bug": True, "exception_type": type(exc).__name__, "location": innermost_location(exc)}
                with contextlib.suppress(OSError, ValueError):
                    conn.send(result)
                continue
            result = {"reason": "decode_failed", "detail": "a sample frame of the compressed pixel data could "
                                                           "not be decoded", "exception_type": type(exc).__name__}
        try:
            conn.send(result)
        except (OSError, ValueError):
            return


def _decode_sample(*, path: str, transfer_syntax: str, frames: list[int], shape: tuple[int, ...],
                   frame_bytes: int) -> dict | None:
    """Decode ``frames`` of one compressed file (runs inside the bounded worker).

    The decoded frame's size is reserved first as a new mapping (address space only, not
    touched): under ``RLIMIT_AS`` a frame that cannot fit fails here with a clean
    ``MemoryError`` instead of inside a decoder plugin (pydicom re-raises plugin
    errors as ``RuntimeError``, which would hide the cause).
    """
    from pydicom import dcmread
    from pydicom.pixels.decoders.base import get_decoder

    try:  # the output frame + a decoder work buffer, as new address space (free heap space would not count)
        mmap.mmap(-1, max(1, 2 * frame_bytes)).close()
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise MemoryError("the decoded frame does not fit under the worker's address-space cap") from None
        raise

    with _silenced():
        ds = dcmread(path, force=True)
        decoder = get_decoder(transfer_syntax)
        for index in frames:
            arr, _meta = decoder.as_array(ds, index=index, raw=True)
            if tuple(arr.shape) != tuple(shape):
                return {"reason": "decode_failed",
                        "detail": f"frame {index} decoded to shape {tuple(arr.shape)}, the header declares "
                                  f"{tuple(shape)}", "exception_type": None}
            del arr
    return None


class _Worker:
    def __init__(self, ctx: Any, allowance: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, allowance), daemon=True,
                                name="medflow-guard-worker")
        self.proc.start()
        child.close()
        self.task: Any = None
        self.deadline = 0.0
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        """Wait for the worker's start-up handshake; a worker that cannot start is a medflow/environment bug."""
        if self.ready:
            return
        msg: Any = None
        try:
            if self.conn.poll(timeout):
                msg = self.conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg != _READY:
            self.stop(kill=True)
            raise IngestBugError("guard decode workers", "worker start-up", "WorkerStartError",
                                 f"exit code {self.proc.exitcode}")
        self.ready = True

    def stop(self, *, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                kill = True
            self.proc.join(timeout=2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)
        self.conn.close()


def _mp_context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    try:
        ctx.set_forkserver_preload(["storage.dicom.guard.workers"])
    except Exception:  # noqa: BLE001  # pragma: no cover
        pass
    return ctx


def _run_bounded(tasks: list[tuple[Any, dict]], *, limits: GuardLimits, workers: int) -> dict[Any, dict | None]:
    """Run decode tasks in ``workers`` bounded processes; a hung worker is killed and replaced."""
    results: dict[Any, dict | None] = {}
    if not tasks:
        return results
    ctx = _mp_context()
    pending = deque(tasks)
    pool: list[_Worker] = []
    try:
        for _ in range(min(workers, len(tasks))):
            pool.append(_Worker(ctx, limits.worker_memory_bytes))
        for w in pool:
            w.wait_ready(_START_TIMEOUT_S)
        while pending or any(w.task is not None for w in pool):
            for i, w in enumerate(pool):
                if w.task is None and pending:
                    key, payload = pending.popleft()
                    if not w.proc.is_alive():
                        w.stop(kill=True)
                        w = pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                    w.wait_ready(_START_TIMEOUT_S)
                    try:
                        w.conn.send(payload)
                    except (OSError, ValueError):
                        results[key] = {"reason": "decode_failed", "detail": "the bounded worker could not "
                                        "accept the task", "exception_type": None}
                        w.stop(kill=True)
                        pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                        continue
                    w.task, w.deadline = key, time.monotonic() + limits.decode_timeout_s
            busy = [w for w in pool if w.task is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(multiprocessing.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                                                        timeout=timeout))
            now = time.monotonic()
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                key = w.task
                if w.conn in ready:
                    try:
                        results[key] = w.conn.recv()
                        w.task = None
                        if results[key] is not None and results[key].get("reason") == "memory_limit":
                            w.stop(kill=True)
                            pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                        continue
                    except (EOFError, OSError):
                        pass  # died: fall through to the sentinel handling
                if w.conn in ready or w.proc.sentinel in ready:
                    w.proc.join(timeout=5.0)
                    code = w.proc.exitcode
                    if code == -signal.SIGKILL:
                        results[key] = {"reason": "memory_limit", "detail": "the bounded worker was killed "
                                        "(SIGKILL, most likely out of memory)", "exception_type": None}
                    else:
                        results[key] = {"reason": "decode_failed", "detail": f"the bounded worker died while "
                                        f"decoding (exit code {code})", "exception_type": None}
                    w.task = None
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                elif now >= w.deadline:
                    results[key] = {"reason": "timeout", "detail": f"decoding a sample frame took longer than "
                                    f"{limits.decode_timeout_s:g} s; the worker was killed", "exception_type": None}
                    w.task = None
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, limits.worker_memory_bytes)
    except IngestBugError:
        raise
    except Exception as exc:  # could not start a worker (no fork, daemonic parent...): not the data's fault
        raise IngestBugError("guard decode workers", "worker start-up", type(exc).__name__,
                             innermost_location(exc)) from None
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)
    return results


def _decode_tasks(inspections: Iterable[FileInspection], limits: GuardLimits) -> list[tuple[Any, dict]]:
    tasks = []
    if limits.decode_sample_frames == 0:
        return tasks
    for i, insp in enumerate(inspections):
        if not insp.needs_decode:
            continue
        frames = [0] if limits.decode_sample_frames == 1 or insp.n_frames == 1 else [0, insp.n_frames - 1]
        tasks.append((i, {"path": str(insp.path), "transfer_syntax": insp.transfer_syntax, "frames": frames,
                          "shape": insp.frame_shape, "frame_bytes": insp.frame_bytes}))
    return tasks

