#!/usr/bin/env python
"""Soak test (issue #12 item 4): repeated ingests and pipeline runs; does anything leak?

``scripts/soak.py --minutes 30 --workers 2 [--out DIR]`` repeats, until the time is up:

* an ingest (the ``medflow-ingest`` Prefect flow, in this process) of a rotating subset of
  ``../shared/data/sts_cohort`` (``--patients`` patients per run) in which about 10% of the
  files are replaced by damaged variants (the mutators of ``scripts/fuzz.py``, seeded by the
  run number), into a fresh workspace that is deleted afterwards;
* every ``--pipeline-every``-th run, the full ``medflow-pipeline`` flow on one cohort patient
  (``--workers`` is ``compute.concurrent_volumes`` and ``compute.dask_threads``).

After each run it samples the RSS of this process and all its children (guard workers,
Prefect's server), the number of open file descriptors (``/proc/self/fd``), the entries in
``tempfile.gettempdir()`` and leftovers in the workspace (``.tmp`` entries, ``.staging-``
folders, ``.tmp-`` files). Pass criteria:

* RSS flat after warm-up: the median RSS of the last quarter of the post-warm-up samples is
  within 10% of the median of the first quarter (warm-up = the first 3 runs);
* open fds and temporary-folder entries back to their post-warm-up baseline after every run,
  and no staging leftovers in any workspace;
* throughput (files ingested per second of ingest) in the last 5 minutes >= 0.9x the first 5
  (windows of a third of the run when it is shorter than 15 minutes).

Writes ``DIR/soak.json`` (every sample) and prints a summary; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import fuzz  # noqa: E402  (scripts/fuzz.py: mutators and data locations)

DAMAGED_FRACTION = 0.10
SOAK_KINDS = {k: w for k, w in fuzz.KINDS.items() if k != "deflate_bomb"}  # bombs: covered by the fuzz run


def rss_tree() -> int:
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for c in me.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return total


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def temp_entries() -> int:
    return len(os.listdir(tempfile.gettempdir()))


def leftovers(ws: pathlib.Path) -> list[str]:
    """Staging/temporary leftovers inside a workspace after a run."""
    out = [p.name for p in (ws / ".tmp").iterdir()] if (ws / ".tmp").is_dir() else []
    for p in ws.rglob("*"):
        if ".staging-" in p.name or ".tmp-" in p.name:
            out.append(p.relative_to(ws).as_posix())
    return out


def make_source(dest: pathlib.Path, patients: list[pathlib.Path], *, seed: int) -> tuple[int, int]:
    """Copy the patients' image series (and RTSTRUCTs) with ~10% of image files damaged; (files, damaged)."""
    rng = random.Random(seed)
    names, weights = list(SOAK_KINDS), list(SOAK_KINDS.values())
    n_files = n_bad = 0
    for pat in patients:
        for f in sorted(pat.rglob("*.dcm")):
            rel = f.relative_to(pat.parent)
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            n_files += 1
            if f.parent.name == "image" and rng.random() < DAMAGED_FRACTION:
                kind = rng.choices(names, weights)[0]
                data = f.read_bytes()
                if kind in ("duplicate", "conflict"):
                    shutil.copyfile(f, out)
                    out.with_name(out.stem + "b.dcm").write_bytes(data if kind == "duplicate"
                                                                   else fuzz.conflict_copy(data, rng))
                    n_files += 1
                else:
                    out.write_bytes(fuzz.mutate(kind, data, rng)[0])
                n_bad += 1
            else:
                shutil.copyfile(f, out)
    return n_files, n_bad


def run_soak(*, minutes: float, workers: int, out: pathlib.Path, patients_per_run: int,
             pipeline_every: int) -> dict[str, Any]:
    from flows.pipeline import ingest, pipeline
    from medflow.config import ComputeConfig, PipelineConfig

    cohort = sorted(p for p in fuzz.COHORT.glob("STS_*") if p.is_dir())
    deadline = time.monotonic() + minutes * 60
    t_start = time.monotonic()
    samples: list[dict[str, Any]] = []
    run = 0
    while time.monotonic() < deadline:
        kind = "pipeline" if pipeline_every and run % pipeline_every == pipeline_every - 1 else "ingest"
        chosen = [cohort[(run * patients_per_run + i) % len(cohort)] for i in range(patients_per_run)]
        if kind == "pipeline":
            chosen = chosen[:1]
        src, ws = out / f"src-{run:04d}", out / f"ws-{run:04d}"
        n_files, n_bad = make_source(src, chosen, seed=run)
        cfg = PipelineConfig(source=str(src), workspace=str(ws),
                             compute=ComputeConfig(concurrent_volumes=workers, dask_threads=workers))
        t0 = time.monotonic()
        error = None
        try:
            summary = (pipeline if kind == "pipeline" else ingest)(cfg)
        except Exception as exc:  # noqa: BLE001 - a failed run is a finding: recorded, the soak goes on
            summary, error = {}, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        seconds = time.monotonic() - t0
        left = leftovers(ws)
        shutil.rmtree(ws)
        shutil.rmtree(src)
        samples.append({"run": run, "kind": kind, "t": round(time.monotonic() - t_start, 1), "files": n_files,
                        "damaged": n_bad, "seconds": round(seconds, 2), "volumes": summary.get("volumes"),
                        "quarantined": summary.get("quarantined"), "rss_bytes": rss_tree(), "fds": open_fds(),
                        "temp_entries": temp_entries(), "leftovers": left, "error": error})
        s = samples[-1]
        print(f"soak run {run:3d} {kind:8s} t={s['t']:7.1f}s files={n_files:4d} damaged={n_bad:3d} "
              f"{seconds:6.1f}s rss={s['rss_bytes'] / 2**20:7.1f} MiB fds={s['fds']} tmp={s['temp_entries']}"
              f"{' LEFTOVERS ' + str(left[:3]) if left else ''}{' FAILED ' + error if error else ''}", flush=True)
        run += 1
    return evaluate(samples, minutes=minutes)


def evaluate(samples: list[dict[str, Any]], *, minutes: float, warmup: int = 3) -> dict[str, Any]:
    res: dict[str, Any] = {"runs": len(samples), "samples": samples}
    post = samples[warmup:]
    if len(post) < 4:
        res.update(ok=False, reason=f"too few runs after warm-up ({len(post)}); run longer")
        return res
    q = max(1, len(post) // 4)
    first, last = statistics.median(s["rss_bytes"] for s in post[:q]), statistics.median(s["rss_bytes"] for s in post[-q:])
    res["rss_first_quarter_mib"], res["rss_last_quarter_mib"] = round(first / 2**20, 1), round(last / 2**20, 1)
    res["rss_ratio"] = round(last / first, 3)
    res["rss_min_max_mib"] = [round(min(s["rss_bytes"] for s in post) / 2**20, 1),
                              round(max(s["rss_bytes"] for s in post) / 2**20, 1)]
    base_fds, base_tmp = post[0]["fds"], post[0]["temp_entries"]
    res["fds_baseline"], res["fds_max_after_run"] = base_fds, max(s["fds"] for s in post)
    res["temp_baseline"], res["temp_max_after_run"] = base_tmp, max(s["temp_entries"] for s in post)
    res["workspace_leftovers"] = sum(len(s["leftovers"]) for s in samples)
    window = min(300.0, minutes * 60 / 3)
    total = max(s["t"] for s in samples)
    ingests = [s for s in samples if s["kind"] == "ingest" and not s.get("error")]

    def rate(sel):
        secs = sum(s["seconds"] for s in sel)
        return sum(s["files"] for s in sel) / secs if secs else float("nan")

    early = [s for s in ingests if s["t"] <= window and s["run"] >= 1]  # run 0 pays the imports
    late = [s for s in ingests if s["t"] >= total - window]
    res["throughput_first_files_per_s"], res["throughput_last_files_per_s"] = round(rate(early), 2), round(rate(late), 2)
    res["throughput_ratio"] = round(rate(late) / rate(early), 3) if early and late else None
    res["window_s"] = window
    res["failed_runs"] = [f"run {s['run']} ({s['kind']}): {s['error']}" for s in samples if s.get("error")]
    checks = {
        "every_run_completed": not res["failed_runs"],
        "rss_flat_within_10pct": res["rss_ratio"] <= 1.10,
        "fds_back_to_baseline": all(s["fds"] <= base_fds for s in post),
        "temp_back_to_baseline": all(s["temp_entries"] <= base_tmp for s in post),
        "no_workspace_leftovers": res["workspace_leftovers"] == 0,
        "throughput_last_ge_0.9_first": res["throughput_ratio"] is not None and res["throughput_ratio"] >= 0.9,
    }
    res["checks"] = checks
    res["ok"] = all(checks.values())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="duration of the soak")
    ap.add_argument("--workers", type=int, default=2, help="compute.concurrent_volumes and compute.dask_threads")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--patients", type=int, default=3, help="cohort patients per ingest run")
    ap.add_argument("--pipeline-every", type=int, default=6, help="every N-th run is a full pipeline run (0: never)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.workers < 1 or args.patients < 1:
        ap.error("--minutes must be > 0, --workers and --patients >= 1")
    if not fuzz.COHORT.is_dir():
        print(f"soak: cohort not found at {fuzz.COHORT}", file=sys.stderr)
        return 2
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="medflow-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    from medflow import runtime

    runtime.configure()  # telemetry off, quiet logs (as the CLI)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # first start migrates a new DB
    os.environ.setdefault("PREFECT_HOME", str(out / "prefect-home"))
    os.environ.setdefault("MEDFLOW_SECRET_KEY", "medflow-soak-secret-not-for-real-data")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    res = run_soak(minutes=args.minutes, workers=args.workers, out=out, patients_per_run=args.patients,
                   pipeline_every=args.pipeline_every)
    (out / "soak.json").write_text(json.dumps(res, indent=1))
    brief = {k: v for k, v in res.items() if k != "samples"}
    print(json.dumps(brief, indent=1))
    print(f"soak: {'PASS' if res['ok'] else 'FAIL'} ({res['runs']} runs; samples in {out / 'soak.json'})")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
