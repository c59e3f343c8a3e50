"""Shared benchmark policy and measurements: warm-up/repeat timing, machine facts, process-tree peak RSS, skips.

Every benchmark module uses :func:`timed` so that every tool in a comparison gets the
same policy (``warmup`` untimed calls, then ``repeat`` timed calls; the median and the
minimum are reported). :func:`machine_facts` records the machine and the thread
settings *as they were* in the measuring process (threadpoolctl's view of the BLAS /
OpenMP pools, dask's scheduler and worker count, the thread environment variables).
:class:`TreeRSS` samples the resident memory of a process and all its descendants.
A benchmark that cannot run (data or optional peer absent) calls :func:`skip`, which
prints the reason and exits with :data:`SKIP_EXIT`, so ``python -m bench.run`` reports
it as skipped rather than failed.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

#: exit status of a benchmark module that skipped itself (same as automake's "skipped" code)
SKIP_EXIT = 77
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "DASK_NUM_WORKERS")


def skip(reason: str) -> NoReturn:
    """Print ``reason`` and exit with :data:`SKIP_EXIT` (a skipped benchmark, not a failure)."""
    print(f"SKIPPED: {reason}", flush=True)
    raise SystemExit(SKIP_EXIT)


@dataclass
class Timing:
    """Wall times (s) of the timed calls of one tool under one policy."""

    seconds: list[float]
    warmup: int
    result: Any = field(default=None, repr=False)

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def min(self) -> float:
        return float(min(self.seconds))

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": round(self.median, 4), "min_s": round(self.min, 4), "repeat": len(self.seconds),
                "warmup": self.warmup, "all_s": [round(s, 4) for s in self.seconds]}


def timed(fn: Callable[[], Any], *, repeat: int, warmup: int = 1,
          setup: Callable[[], Any] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed; keep the last result.

    Parameters
    ----------
    fn : callable
        The measured work, called with no arguments.
    repeat : int
        Timed calls (>= 1).
    warmup : int
        Untimed calls first (>= 0): imports, JIT compilation, first touch of pages.
    setup : callable, optional
        Called untimed before every call (warm-up and timed), e.g. to delete an output.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    walls, out = [], None
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
    return Timing(walls, warmup, out)


def thread_facts() -> dict[str, Any]:
    """Thread settings of this process as they are now (threadpoolctl, dask, numba, environment)."""
    facts: dict[str, Any] = {"env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    try:
        from threadpoolctl import threadpool_info

        facts["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                                for p in threadpool_info()]
    except ImportError:
        facts["threadpools"] = "threadpoolctl not installed"
    try:
        import dask

        facts["dask"] = {"scheduler": dask.config.get("scheduler", None) or "default (threads for dask.array)",
                         "num_workers": dask.config.get("num_workers", None) or os.cpu_count()}
    except ImportError:
        facts["dask"] = "not installed"
    if "numba" in sys.modules:
        facts["numba_threads"] = sys.modules["numba"].config.NUMBA_NUM_THREADS
    return facts


def machine_facts() -> dict[str, Any]:
    """Cores, CPU, memory, load, OS, Python and the thread settings of this process."""
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        facts["loadavg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        facts["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 2)
    except ImportError:
        pass
    facts["threads"] = thread_facts()
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class TreeRSS(threading.Thread):
    """Sample the summed RSS of process ``pid`` and all its descendants every ``period`` seconds.

    ``peak`` is the largest sum seen (bytes); ``peak_processes`` the process count at that
    moment and ``max_processes`` the most processes seen at once. Sampling can miss a
    spike shorter than ``period``.
    """

    def __init__(self, pid: int, *, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.period = period
        self.peak = 0
        self.peak_processes = 0
        self.max_processes = 0
        self.samples = 0
        self._stop_evt = threading.Event()

    def sample(self) -> int:
        ps = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except ps.NoSuchProcess:
            return 0
        total = 0
        alive = 0
        for p in procs:
            try:
                total += p.memory_info().rss
                alive += 1
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue
        if total > self.peak:
            self.peak, self.peak_processes = total, alive
        self.max_processes = max(self.max_processes, alive)
        self.samples += 1
        return total

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.period)

    def stop(self) -> int:
        self._stop_evt.set()
        self.join()
        return self.peak


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 period: float = 0.1, capture: bool = True) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, exit status, output and the peak RSS of its process tree.

    The RSS is the sum over the process and all its descendants (sampled every
    ``period`` s), so worker processes and servers it starts are counted.
    """
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None, text=True)
    sampler = TreeRSS(proc.pid, period=period)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    return {"cmd": cmd, "returncode": proc.returncode, "seconds": wall, "stdout": out or "", "stderr": err or "",
            "peak_rss_bytes": sampler.peak, "processes_at_peak": sampler.peak_processes,
            "max_processes": sampler.max_processes, "rss_samples": sampler.samples}
