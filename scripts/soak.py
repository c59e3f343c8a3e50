#!/usr/bin/env python
"""Soak test (issue #12 item 4): repeated ingests and pipeline runs; does anything leak?

``scripts/soak.py --minutes 30 --workers 2 [--out DIR]`` repeats, until the time is up:

* an ingest (the ``medflow-ingest`` Prefect flow, in this process) of a rotating subset of
  ``../shared/data/sts_cohort`` (``--patients`` patients per run) in which about 10% of the
  files are replaced by damaged variants (the mutators of ``scripts/fuzz.py``, seeded by the
  run number), into a fresh workspace that is deleted afterwards;
* one run in every ``--pipeline-every`` (runs 1, 1+N, 1+2N, ...), the full ``medflow-pipeline``
  flow on one cohort patient (``--workers`` is ``compute.concurrent_volumes`` and
  ``compute.dask_threads``).

After each run it samples the RSS of this process and all its children (guard workers, the
forkserver, Prefect's server), the number of open file descriptors of this process
(``/proc/self/fd``; the targets of any fd beyond the baseline are recorded), the entries in the
temporary folder and leftovers in the workspace (``.tmp`` entries, ``.staging-`` folders,
``.tmp-`` files). The temporary folder is a private one (``DIR/tmp``, exported as ``TMPDIR`` to
this process and every child), so that other users of the machine's ``/tmp`` do not move the count.

Warm-up: the first 3 runs, and at least through the first run of each distinct input (its kind and
its cohort patients; the soak cycles through a fixed set of them, see :func:`warmup_runs`).
Some process-wide resources are created once, on first use, and kept for the process's life;
they are not leaks and must be in place before the baseline is taken. Measured (in-process
Prefect 3.9, ephemeral API), after the first run of each kind the fd count stays constant:

* the first ingest of several patients starts the ``forkserver`` of the collection's process
  pool (2 pipes, and its child processes);
* the first pipeline run adds keep-alive HTTP connections to Prefect's API and 2 font files that
  matplotlib's font cache keeps open (the report's plots). (Stage tasks carried Prefect tags until
  2026-12-03: each tag set then added a concurrency-slot service with its own connection.)

Pass criteria (checked on the runs after warm-up):

* RSS flat: the median RSS of the last quarter of the post-warm-up samples is within 10% of the
  median of the first quarter;
* open fds and temporary-folder entries back to the baseline (their value after the last
  warm-up run) after every run, and no staging leftovers in any workspace;
* throughput (files ingested per second of ingest) in the last 5 minutes >= 0.9x the first 5
  (windows of a third of the run when it is shorter than 15 minutes);
* every run completed.

Wall-time throughput is coarse on a shared machine: Prefect's engine rounds each in-process flow
run up to about the next whole second (an empty flow takes 1.1 s, a 1.2 s one 2.1 s) and other
users' load stretches it. Files per CPU second of the process tree and the load average of each
window are reported beside it (not criteria), to tell a slower medflow from a busier machine.

Prints one PASS/FAIL line per criterion, writes ``DIR/soak-summary.json`` (the figures and
checks) and ``DIR/soak.json`` (the same plus every sample); exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import collections
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


def cpu_tree() -> tuple[float, float, float]:
    """CPU seconds used so far: (this process, the collection's workers, Prefect's server).

    The workers count with the processes that reaped them (the forkserver, or this process); Prefect's
    ephemeral server is told apart by its command line, so that a drift in CPU per file can be placed.
    """
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    own, workers, server = t.user + t.system, t.children_user + t.children_system, 0.0
    for p in me.children(recursive=True):
        try:
            t = p.cpu_times()
            used = t.user + t.system + t.children_user + t.children_system
            if _is_prefect_server(p.cmdline()):
                server += used
            else:
                workers += used
        except psutil.Error:
            pass
    return own, workers, server


def _is_prefect_server(cmdline: list[str]) -> bool:
    """Whether a command line is Prefect's ephemeral API server (uvicorn serving ``prefect.server``)."""
    return any("uvicorn" in part or "prefect.server" in part for part in cmdline)


def rss_tree() -> tuple[int, int]:
    """RSS of this process and of all its children (bytes): (this process, children)."""
    import psutil

    me = psutil.Process()
    children = 0
    for c in me.children(recursive=True):
        try:
            children += c.memory_info().rss
        except psutil.Error:
            pass
    return me.memory_info().rss, children


def memory_breakdown() -> dict[str, float]:
    """Where this process's RSS is (MiB), to tell a leak from fragmentation; diagnostics, not criteria.

    ``heap`` is the main malloc arena (``[heap]``), ``anon`` the anonymous mappings (glibc's
    per-thread arenas, individually mapped buffers, CPython's small-object arenas), ``file``
    mapped files (libraries); from ``sys._debugmallocstats``: ``pymalloc_arenas`` the small-object
    arenas held (1 MiB each) and ``pymalloc_live`` the bytes in their live objects.
    """
    out = collections.Counter()
    kind = "file"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                kind = ("heap" if path == "[heap]" else "anon" if not path
                        else "file" if path.startswith("/") else "other")
            elif head[0] == "Rss:":
                out[kind] += int(head[1]) * 1024
    res = {k: round(v / 2**20, 1) for k, v in sorted(out.items())}
    res.update(_pymalloc())
    return res


def _pymalloc() -> dict[str, float]:
    """CPython's small-object allocator: arenas held and bytes in live blocks, MiB (``sys._debugmallocstats`` on fd 2)."""
    import re

    with tempfile.TemporaryFile() as tmp:  # unlinked at once: no entry in the temporary folder
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    out = {}
    for key, pattern in (("pymalloc_arenas", rb"# arenas allocated current\s*=\s*([\d,]+)"),
                         ("pymalloc_live", rb"# bytes in allocated blocks\s*=\s*([\d,]+)")):
        m = re.search(pattern, text)
        if m:
            n = int(m.group(1).replace(b",", b""))
            out[key] = float(n) if key == "pymalloc_arenas" else round(n / 2**20, 1)
    return out


def fd_targets() -> dict[int, str]:
    """This process's open file descriptors and what each points at (file, ``socket:[...]``, ``pipe:[...]``)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used, or closed meanwhile
            pass
    return out


def describe_sockets(targets: dict[int, str]) -> dict[int, str]:
    """``targets`` with each TCP socket's endpoints added (``/proc/net/tcp*``: which connection a held fd is)."""
    tcp = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = pathlib.Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, inode = f[1], f[2], f[3], f[9]
            tcp[inode] = (f"{name} :{int(local.rsplit(':', 1)[1], 16)} -> :{int(remote.rsplit(':', 1)[1], 16)}"
                          f" state {state}")
    out = {}
    for fd, t in targets.items():
        inode = t[len("socket:["):-1] if t.startswith("socket:[") else None
        out[fd] = f"{t} {tcp[inode]}" if inode in tcp else t
    return out


def fd_kind(target: str) -> str:
    return target.split(":", 1)[0] if not target.startswith("/") else "file"


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
        # run 1 is the first pipeline run: the warm-up (runs 0-2) holds one run of each kind
        kind = "pipeline" if pipeline_every and run % pipeline_every == 1 % pipeline_every else "ingest"
        chosen = [cohort[(run * patients_per_run + i) % len(cohort)] for i in range(patients_per_run)]
        if kind == "pipeline":
            chosen = chosen[:1]
        key = run_input(run, patients_per_run=patients_per_run, pipeline_every=pipeline_every, n_patients=len(cohort))
        src, ws = out / f"src-{run:04d}", out / f"ws-{run:04d}"
        n_files, n_bad = make_source(src, chosen, seed=run)
        cfg = PipelineConfig(source=str(src), workspace=str(ws),
                             compute=ComputeConfig(concurrent_volumes=workers, dask_threads=workers))
        t0, cpu0 = time.monotonic(), cpu_tree()
        error = None
        try:
            summary = (pipeline if kind == "pipeline" else ingest)(cfg)
        except Exception as exc:  # noqa: BLE001 - a failed run is a finding: recorded, the soak goes on
            summary, error = {}, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        seconds, cpu1 = time.monotonic() - t0, cpu_tree()
        cpu_self, cpu_workers, cpu_server = (b - a for a, b in zip(cpu0, cpu1, strict=True))
        cpu_children = cpu_workers + cpu_server
        cpu_s = cpu_self + cpu_children
        left = leftovers(ws)
        shutil.rmtree(ws)
        shutil.rmtree(src)
        memory = memory_breakdown()
        fds = fd_targets()  # no gc.collect() first: a resource that only the cyclic GC releases counts as held
        rss_self, rss_children = rss_tree()
        samples.append({"run": run, "kind": kind, "input": key, "t": round(time.monotonic() - t_start, 1),
                        "files": n_files,
                        "damaged": n_bad, "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu_s, 2), "cpu_self_seconds": round(cpu_self, 2),
                        "cpu_children_seconds": round(cpu_children, 2), "cpu_workers_seconds": round(cpu_workers, 2),
                        "cpu_server_seconds": round(cpu_server, 2), "loadavg_1min": round(os.getloadavg()[0], 2), "volumes": summary.get("volumes"),
                        "quarantined": summary.get("quarantined"), "rss_bytes": rss_self + rss_children,
                        "rss_self_bytes": rss_self, "rss_children_bytes": rss_children, "memory_mib": memory, "fds": len(fds),
                        "fd_kinds": dict(sorted(collections.Counter(map(fd_kind, fds.values())).items())),
                        "fd_targets": {str(k): v for k, v in sorted(describe_sockets(fds).items())},
                        "temp_entries": temp_entries(), "leftovers": left, "error": error})
        s = samples[-1]
        print(f"soak run {run:3d} {kind:8s} t={s['t']:7.1f}s files={n_files:4d} damaged={n_bad:3d} "
              f"{seconds:6.1f}s rss={s['rss_bytes'] / 2**20:7.1f} MiB ({rss_self / 2**20:.0f}+{rss_children / 2**20:.0f})"
              f" fds={s['fds']} tmp={s['temp_entries']}"
              f"{' LEFTOVERS ' + str(left[:3]) if left else ''}{' FAILED ' + error if error else ''}", flush=True)
        run += 1
    return evaluate(samples, minutes=minutes)


def run_input(run: int, *, patients_per_run: int, pipeline_every: int, n_patients: int) -> str:
    """The input of run ``run`` as :func:`run_soak` chooses it: its kind and the cohort positions it reads."""
    kind = "pipeline" if pipeline_every and run % pipeline_every == 1 % pipeline_every else "ingest"
    chosen = [(run * patients_per_run + i) % n_patients for i in range(patients_per_run)]
    return f"{kind}:{','.join(map(str, chosen[:1] if kind == 'pipeline' else chosen))}"


def warmup_runs(samples: list[dict[str, Any]], minimum: int = 3) -> int:
    """Runs in the warm-up: at least ``minimum``, and through the first run of each distinct input.

    The soak cycles through a fixed set of inputs (kind + cohort patients). Some process-wide
    resources are created once, on first use, by a particular input, and kept: the first run of
    each kind (module doc), and the first pipeline run on a larger patient (the heap's high-water
    mark; a task tag set first seen with it). The baseline is taken once every input has run once;
    after that, anything that still grows is a leak.
    """
    firsts = {}
    for i, s in enumerate(samples):
        firsts.setdefault(s.get("input", s["kind"]), i)
    return max([minimum, *(i + 1 for i in firsts.values())])


def evaluate(samples: list[dict[str, Any]], *, minutes: float, warmup: int = 3) -> dict[str, Any]:
    res: dict[str, Any] = {"runs": len(samples),
                           "runs_by_kind": dict(collections.Counter(s["kind"] for s in samples)),
                           "samples": samples}
    warmup = warmup_runs(samples, warmup)
    res["warmup_runs"] = warmup
    res["failed_runs"] = [f"run {s['run']} ({s['kind']}): {s['error']}" for s in samples if s.get("error")]
    post = samples[warmup:]
    if len(post) < 4:
        res.update(ok=False, checks={}, reason=f"too few runs after warm-up ({len(post)}); run longer")
        return res
    q = max(1, len(post) // 4)
    first, last = statistics.median(s["rss_bytes"] for s in post[:q]), statistics.median(s["rss_bytes"] for s in post[-q:])
    res["rss_first_quarter_mib"], res["rss_last_quarter_mib"] = round(first / 2**20, 1), round(last / 2**20, 1)
    res["rss_ratio"] = round(last / first, 3)
    for part in ("self", "children"):  # where a growth is: this process, or the forkserver/Prefect's server
        key = f"rss_{part}_bytes"
        res[f"rss_{part}_first_last_quarter_mib"] = [
            round(statistics.median(s.get(key, 0) for s in sel) / 2**20, 1) for sel in (post[:q], post[-q:])]
    parts = sorted({k for s in post for k in s.get("memory_mib", {})})
    if parts:  # diagnostics: which kind of memory grew (module doc of memory_breakdown)
        res["memory_first_last_quarter_mib"] = {
            k: [round(statistics.median(s.get("memory_mib", {}).get(k, 0.0) for s in sel), 1) for sel in (post[:q], post[-q:])]
            for k in parts}
    res["rss_min_max_mib"] = [round(min(s["rss_bytes"] for s in post) / 2**20, 1),
                              round(max(s["rss_bytes"] for s in post) / 2**20, 1)]
    base = samples[warmup - 1]  # the state after warm-up
    base_fds, base_tmp = base["fds"], base["temp_entries"]
    res["fds_during_warmup"] = [s["fds"] for s in samples[:warmup]]
    res["fds_baseline"], res["fds_baseline_kinds"] = base_fds, base.get("fd_kinds")
    res["fds_after_each_run"] = [s["fds"] for s in post]
    res["fds_max_after_run"] = max(res["fds_after_each_run"])
    base_targets = set(base.get("fd_targets", {}).values())
    res["fds_above_baseline"] = [  # what the extra fds were, to find the leak
        {"run": s["run"], "kind": s["kind"], "fds": s["fds"],
         "new_targets": sorted(set(s.get("fd_targets", {}).values()) - base_targets)}
        for s in post if s["fds"] > base_fds]
    res["temp_baseline"] = base_tmp
    res["temp_after_each_run"] = [s["temp_entries"] for s in post]
    res["temp_max_after_run"] = max(res["temp_after_each_run"])
    res["workspace_leftovers"] = sum(len(s["leftovers"]) for s in samples)
    window = min(300.0, minutes * 60 / 3)
    total = max(s["t"] for s in samples)
    ingests = [s for s in samples if s["kind"] == "ingest" and not s.get("error")]

    def rate(sel, key="seconds"):
        secs = sum(s.get(key) or 0 for s in sel)
        return sum(s["files"] for s in sel) / secs if secs else float("nan")

    early = [s for s in ingests if s["t"] <= window and s["run"] >= 1]  # run 0 pays the imports
    late = [s for s in ingests if s["t"] >= total - window]
    res["window_s"] = window
    res["throughput_first_files_per_s"], res["throughput_last_files_per_s"] = round(rate(early), 2), round(rate(late), 2)
    res["throughput_runs_first_last"] = [len(early), len(late)]
    res["throughput_ratio"] = round(rate(late) / rate(early), 3) if early and late else None
    # not criteria: to tell a slower medflow from a busier machine (other users' load stretches wall time)
    res["throughput_cpu_first_last_files_per_cpu_s"] = [round(rate(early, "cpu_seconds"), 2),
                                                        round(rate(late, "cpu_seconds"), 2)]
    res["throughput_cpu_ratio"] = (round(rate(late, "cpu_seconds") / rate(early, "cpu_seconds"), 3)
                                   if early and late else None)
    for part in ("self", "children", "workers", "server"):  # where CPU per file grows
        key = f"cpu_{part}_seconds"
        if all(key in s for s in early + late):
            res[f"cpu_{part}_ms_per_file_first_last"] = [
                round(1000 * sum(s[key] for s in sel) / max(1, sum(s["files"] for s in sel)), 2) for sel in (early, late)]
    res["loadavg_first_last_window"] = [round(statistics.mean(s.get("loadavg_1min", 0) for s in sel), 2)
                                        if sel else None for sel in (early, late)]
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


def report_lines(res: dict[str, Any]) -> list[str]:
    """One line per criterion, PASS or FAIL, with its figures."""
    def verdict(name: str) -> str:
        return "PASS" if res.get("checks", {}).get(name) else "FAIL"

    lines = [f"runs completed: {res['runs']} {res['runs_by_kind']} (warm-up: first {res['warmup_runs']}); "
             f"failed: {len(res['failed_runs'])}"]
    if "reason" in res:
        return [*lines, f"FAIL  {res['reason']}"]
    fds_after = res["fds_after_each_run"]
    lines += [
        f"{verdict('every_run_completed')}  every run completed: {len(res['failed_runs'])} failed"
        + "".join(f"\n        {f}" for f in res["failed_runs"][:10]),
        f"{verdict('rss_flat_within_10pct')}  RSS (process tree) flat after warm-up: first quarter median "
        f"{res['rss_first_quarter_mib']} MiB, last quarter median {res['rss_last_quarter_mib']} MiB, ratio "
        f"{res['rss_ratio']} (<= 1.10); range {res['rss_min_max_mib'][0]}-{res['rss_min_max_mib'][1]} MiB; this "
        f"process {res['rss_self_first_last_quarter_mib']}, children {res['rss_children_first_last_quarter_mib']}",
        f"{verdict('fds_back_to_baseline')}  open fds back to baseline after every run: baseline {res['fds_baseline']} "
        f"{res['fds_baseline_kinds']} (warm-up {res['fds_during_warmup']}), after each run min {min(fds_after)} "
        f"max {max(fds_after)}, runs above baseline {len(res['fds_above_baseline'])}",
        f"{verdict('temp_back_to_baseline')}  temporary-folder entries back to baseline: baseline "
        f"{res['temp_baseline']}, after each run max {res['temp_max_after_run']}",
        f"{verdict('no_workspace_leftovers')}  staging leftovers in workspaces: {res['workspace_leftovers']}",
        f"{verdict('throughput_last_ge_0.9_first')}  ingest throughput, windows of {res['window_s']:.0f} s: first "
        f"{res['throughput_first_files_per_s']} files/s ({res['throughput_runs_first_last'][0]} runs), last "
        f"{res['throughput_last_files_per_s']} files/s ({res['throughput_runs_first_last'][1]} runs), ratio "
        f"{res['throughput_ratio']} (>= 0.9); per CPU second of the process tree "
        f"{res['throughput_cpu_first_last_files_per_cpu_s']} files/s, ratio {res['throughput_cpu_ratio']}; "
        f"machine load average {res['loadavg_first_last_window']}; CPU ms per file first/last window: "
        + ", ".join(f"{part} {res[key]}" for part in ("self", "workers", "server")
                    if (key := f"cpu_{part}_ms_per_file_first_last") in res),
    ]
    for extra in res["fds_above_baseline"][:5]:
        lines.append(f"        run {extra['run']} ({extra['kind']}): {extra['fds']} fds, new: {extra['new_targets'][:8]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="duration of the soak")
    ap.add_argument("--workers", type=int, default=2, help="compute.concurrent_volumes and compute.dask_threads")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--patients", type=int, default=3, help="cohort patients per ingest run")
    ap.add_argument("--pipeline-every", type=int, default=6, help="every N-th run is a full pipeline run (0: never)")
    ap.add_argument("--evaluate", type=pathlib.Path, default=None,
                    help="re-evaluate the samples of an earlier soak (its soak.json) instead of running one")
    args = ap.parse_args(argv)
    if args.evaluate is not None:
        return _reevaluate(args.evaluate)
    if args.minutes <= 0 or args.workers < 1 or args.patients < 1:
        ap.error("--minutes must be > 0, --workers and --patients >= 1")
    if not fuzz.COHORT.is_dir():
        print(f"soak: cohort not found at {fuzz.COHORT}", file=sys.stderr)
        return 2
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="medflow-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    private_tmp = out / "tmp"  # counted by the temp criterion: ours alone, not the shared /tmp
    private_tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(private_tmp)  # children (forkserver, Prefect's server) inherit it
    tempfile.tempdir = str(private_tmp)
    from medflow import runtime

    runtime.configure()  # telemetry off, quiet logs (as the CLI)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # first start migrates a new DB
    os.environ.setdefault("PREFECT_HOME", str(out / "prefect-home"))
    os.environ.setdefault("MEDFLOW_SECRET_KEY", "medflow-soak-secret-not-for-real-data")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    res = run_soak(minutes=args.minutes, workers=args.workers, out=out, patients_per_run=args.patients,
                   pipeline_every=args.pipeline_every)
    res = {"minutes": args.minutes, "workers": args.workers, "patients_per_run": args.patients,
           "pipeline_every": args.pipeline_every, "tmpdir": str(private_tmp), **res}
    brief = {k: v for k, v in res.items() if k != "samples"}
    (out / "soak.json").write_text(json.dumps(res, indent=1))
    (out / "soak-summary.json").write_text(json.dumps(brief, indent=1))
    print("\n".join(report_lines(res)))
    print(f"soak: {'PASS' if res['ok'] else 'FAIL'} ({res['runs']} runs; summary in {out / 'soak-summary.json'}, "
          f"samples in {out / 'soak.json'})")
    return 0 if res["ok"] else 1


def _reevaluate(path: pathlib.Path) -> int:
    """Evaluate a stored soak.json with the current criteria (samples without ``input`` get it from their run)."""
    old = json.loads(path.read_text())
    n = sum(1 for p in fuzz.COHORT.glob("STS_*") if p.is_dir())
    samples = [{**s, "input": s.get("input") or run_input(s["run"], patients_per_run=old["patients_per_run"],
                                                              pipeline_every=old["pipeline_every"], n_patients=n)}
               for s in old["samples"]]
    res = {**{k: v for k, v in old.items() if k not in ("samples", "checks", "ok")},
           **evaluate(samples, minutes=old["minutes"])}
    out = path.with_name("soak-reevaluated.json")
    out.write_text(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))
    print("\n".join(report_lines(res)))
    print(f"soak (re-evaluated): {'PASS' if res['ok'] else 'FAIL'} ({res['runs']} runs; {out})")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
