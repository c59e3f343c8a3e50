"""Run every ``bench/bench_*.py`` module, each in its own subprocess (``python -m bench.run``).

Usage: ``python -m bench.run [NAME ...] [--timeout SECONDS]`` where NAME filters modules by
substring (e.g. ``python -m bench.run voxel cohort``). Each module runs as
``python -m bench.<name>`` with its default configuration in a fresh interpreter, so one
benchmark's imports, thread pools and memory never affect the next, and a crash, a
missing optional peer or a timeout in one never stops the others. A module that cannot
run exits with :data:`bench._common.SKIP_EXIT` after printing why: it is reported as
skipped. The exit status is non-zero only when a benchmark failed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

from bench._common import SKIP_EXIT

HERE = pathlib.Path(__file__).resolve().parent


#: Benchmarks that write many GiB: run after the others, so that their dirty pages and evictions never
#: fall on another benchmark's timings (bench_voxel_ops right after bench_out_of_core read 0.31x instead of
#: 1.85x on its labelling row in one fresh-clone run).
RUN_LAST = ("bench_out_of_core",)


def discover() -> list[str]:
    """Every ``bench/bench_*.py`` module name, sorted, the ones in :data:`RUN_LAST` at the end."""
    return sorted((p.stem for p in HERE.glob("bench_*.py")), key=lambda n: (n in RUN_LAST, n))


def settle() -> None:
    """Flush what the previous benchmark wrote (``os.sync``), so the next one does not pay its write-back."""
    if hasattr(os, "sync"):
        os.sync()


def run_one(name: str, *, timeout: float | None, python: str = sys.executable) -> tuple[str, float, str]:
    """Run ``bench.<name>`` in a subprocess; returns (status, seconds, reason)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-m", f"bench.{name}"], cwd=HERE.parent, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return "failed", time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
    sec = time.perf_counter() - t0
    if proc.returncode == 0:
        return "ok", sec, ""
    if proc.returncode == SKIP_EXIT:
        return "skipped", sec, "see the SKIPPED line above"
    return "failed", sec, f"exit status {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="substrings selecting benchmark modules (default: all)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark (default: none)")
    args = ap.parse_args(argv)
    names = discover()
    if args.names:
        names = [n for n in names if any(a in n for a in args.names)]
        if not names:
            print(f"no benchmark matches {args.names}; available: {', '.join(discover())}")
            return 2
    outcome: list[tuple[str, str, float, str]] = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        settle()
        status, sec, reason = run_one(name, timeout=args.timeout)
        print(f"=== bench.{name} {status} in {sec:.1f} s ===", flush=True)
        outcome.append((name, status, sec, reason))
    print("\nsummary:")
    for name, status, sec, reason in outcome:
        print(f"  {name:24s} {status:8s} {sec:8.1f} s  {reason}")
    failed = [n for n, s, _, _ in outcome if s == "failed"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
