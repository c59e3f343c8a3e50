"""Run every ``bench/bench_*.py`` module's ``main()`` in sequence (``python -m bench.run``).

Usage: ``python -m bench.run [NAME ...]`` where NAME filters modules by substring
(e.g. ``python -m bench.run voxel``). Arguments after ``--`` are not used; each
module's ``main()`` is called with no arguments so it runs its default configuration.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import time
import traceback


def discover() -> list[str]:
    here = pathlib.Path(__file__).resolve().parent
    return sorted(p.stem for p in here.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = discover()
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    failed: list[str] = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            entry = getattr(module, "main", None)
            if entry is None:
                print(f"bench.{name} has no main(); skipped")
                continue
            # each module parses its own argv; give it none so it uses its defaults
            saved, sys.argv = sys.argv, [f"bench/{name}.py"]
            try:
                entry()
            finally:
                sys.argv = saved
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"=== bench.{name} finished in {time.perf_counter() - t0:.1f} s ===", flush=True)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
