#!/usr/bin/env python
"""Crash harness: ``kill -9`` the pipeline at seeded random moments in every stage, rerun, compare with a clean run.

    .venv/bin/python scripts/crash_harness.py --kills 20 --seed 7 [--source DIR] [--work DIR] [--json OUT]

1. An uninterrupted reference run (``medflow run SOURCE``) while the harness watches the
   workspace: for each stage, the window from its first staging folder to its last finished
   artifact (the run's progress, read from the workspace).
2. Cycles on a fresh workspace each: for each stage in order (collection, preprocessing,
   processing, analysis, discovery, report), start ``medflow run``, wait until that stage is at
   work (a ``.staging-*`` folder of that stage exists), wait a seeded random part of the
   stage's reference window, then SIGKILL the run's whole process group (the CLI and Prefect's
   ephemeral server). After each kill: no partial artifact at a final path (every final artifact
   folder matches its manifest). At the end of a cycle, one rerun to completion.
3. Each cycle's workspace is compared with the reference: every artifact file's sha256 and the
   feature table, the catalog's row counts (each study ingested once); the runs' Prefect database
   must show every killed run as Crashed (marked by the next run's clean-up).

Prints a JSON summary (kills, stages hit, mismatches) and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("collection", "preprocessing", "processing", "analysis", "discovery", "report")
MANIFEST = ".medflow-manifest.json"
IGNORED_TOP = {"results", "leases", "runs", ".tmp", "quarantine"}


API: dict[str, str] = {}  # PREFECT_API_URL of the harness's server, once started
RUN_START = [0.0]  # epoch start of the current run: staging folders older than it were left by a killed run
CODE = [ROOT]  # the medflow code the runs import (a snapshot keeps concurrent edits out of a long harness)
#: task name -> stage (the pipeline's tasks)
TASK_STAGE = {"collect": "collection", "clinical": "collection", "preprocess": "preprocessing",
              "fuse": "preprocessing", "segment": "processing", "features": "analysis", "discover": "discovery",
              "report": "report"}


def _env(home: pathlib.Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
           "MEDFLOW_SECRET_KEY": os.environ.get("MEDFLOW_SECRET_KEY", "crash-harness-secret-0123456789abcdef")}
    for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        env.pop(k, None)
    env.update(API)
    env["PYTHONPATH"] = os.pathsep.join([str(CODE[0]), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def start_server(home: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
    """A Prefect server on a free loopback port (its own process group); the runs report to it."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefect = pathlib.Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=_env(home), stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            API["PREFECT_API_URL"] = url
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"Prefect server did not start; see {log}")


def _start(source: pathlib.Path, ws: pathlib.Path, home: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
    medflow = pathlib.Path(sys.executable).with_name("medflow")
    RUN_START[0] = time.time()
    fh = open(log, "ab")  # noqa: SIM115 - closed by the child's exit; the harness is short-lived
    return subprocess.Popen([str(medflow), "run", str(source), "--workspace", str(ws)], env=_env(home), cwd=CODE[0],
                            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _api(path: str, body: dict) -> list[dict]:
    import urllib.request

    req = urllib.request.Request(API["PREFECT_API_URL"] + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _stage_of(task_name: str) -> str | None:
    base = task_name.rsplit("-", 1)[0]
    return TASK_STAGE.get(base)


def running_stages() -> list[str]:
    """Stages whose task is Running right now (the run's progress, from the Prefect server)."""
    return sorted({s for s in (_stage_of(r["name"]) for r in _running_tasks()) if s})


def _running_tasks() -> list[dict]:
    """Task runs Running in the current run (a killed run's task runs stay Running forever: skipped)."""
    import datetime

    since = datetime.datetime.fromtimestamp(RUN_START[0] - 1, datetime.UTC).isoformat()
    return _api("/task_runs/filter", {"task_runs": {"state": {"type": {"any_": ["RUNNING"]}},
                                                    "start_time": {"after_": since}},
                                      "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}, "limit": 20})


def task_durations(since: str) -> dict[str, list[float]]:
    """Stage -> durations (s) of the tasks that ran (not cached) after ``since`` (ISO time)."""
    import datetime

    runs = _api("/task_runs/filter", {"task_runs": {"start_time": {"after_": since}}, "limit": 200})
    out: dict[str, list[float]] = {}
    for r in runs:
        stage = _stage_of(r["name"])
        if stage and r.get("start_time") and r.get("end_time"):
            t0 = datetime.datetime.fromisoformat(r["start_time"].replace("Z", "+00:00"))
            t1 = datetime.datetime.fromisoformat(r["end_time"].replace("Z", "+00:00"))
            out.setdefault(stage, []).append((t1 - t0).total_seconds())
    return out


NEXT = {"collection": "preprocessing", "preprocessing": "processing", "processing": "analysis",
        "analysis": "preprocessing", "discovery": "report", "report": "report"}


def stage_now(ws: pathlib.Path) -> str | None:
    """The stage the run is in: a running stage task (server API); inside a per-volume chain task, the
    stage being written (staging folder) or the one after the newest finished artifact (workspace)."""
    api = running_stages()
    if api:
        return api[0]
    if not _running_tasks():
        return None
    writing = _staging(ws)
    if writing:
        return sorted(writing, key=STAGES.index)[-1]
    newest, stage = -1.0, "collection"
    for st, folders in _finals(ws).items():
        for f in folders:
            m = _mtime(f)
            if m > newest:
                newest, stage = m, st
    return NEXT[stage] if newest >= 0 else "collection"


def _staging(ws: pathlib.Path) -> dict[str, list[str]]:
    """Stage -> staging folders currently present (work in progress)."""
    out: dict[str, list[str]] = {}
    base = ws / "artifacts"
    for stage in STAGES:
        d = base / stage
        if d.is_dir():
            found = [p.name for p in d.glob("*/.*.staging-*") if _mtime(p) >= RUN_START[0] - 1]
            if found:
                out[stage] = found
    return out


def _mtime(p: pathlib.Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _left_by_a_kill(name: str) -> bool:
    """A staging folder (``atomic_folder``) or temporary file (``atomic_path``) a killed write leaves: never read."""
    return name.startswith(".") and (".staging-" in name or ".tmp-" in name)


def leftover_staging(ws: pathlib.Path) -> int:
    """Staging folders and temporary files a killed run left beside final paths (never read)."""
    return sum(1 for p in (ws / "artifacts").glob("*/*/.*") if _left_by_a_kill(p.name))


def _finals(ws: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    out: dict[str, list[pathlib.Path]] = {}
    for stage in STAGES:
        d = ws / "artifacts" / stage
        out[stage] = sorted(p for p in d.glob("*/*") if not p.name.startswith(".") and p.is_dir()) if d.is_dir() else []
    return out


def _sha(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def partial_artifacts(ws: pathlib.Path) -> list[str]:
    """Final artifact folders that do not match their manifest (missing, extra or resized files)."""
    from storage.workspace import folder_manifest

    bad = []
    for stage, folders in _finals(ws).items():
        for folder in folders:
            mf = folder / MANIFEST
            if not mf.is_file():
                bad.append(f"{stage}/{folder.name}: no manifest")
                continue
            want = json.loads(mf.read_text())
            have = folder_manifest(folder)
            if {k: v[0] for k, v in have.items()} != {k: v[0] for k, v in want.items()}:
                bad.append(f"{stage}/{folder.name}: files differ from manifest")
        for record in sorted((ws / "artifacts" / stage).glob("*/*.json")) if (ws / "artifacts" / stage).is_dir() else []:
            try:  # single-file records (a step's output reference) are written whole or not at all
                json.loads(record.read_text())
            except ValueError:
                bad.append(f"{stage}/{record.name}: torn record")
    return bad


def digests(ws: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under artifacts/ and reports/ (what a killed write leaves is excluded: never read)."""
    out = {}
    for top in ("artifacts", "reports"):
        for p in sorted((ws / top).rglob("*")):
            rel = p.relative_to(ws)
            if p.is_file() and not any(_left_by_a_kill(part) for part in rel.parts):
                out[rel.as_posix()] = _sha(p)
    return out


def catalog_counts(ws: pathlib.Path) -> dict[str, int]:
    con = sqlite3.connect(ws / "catalog.sqlite")
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in sorted(tables)}  # noqa: S608
    finally:
        con.close()


def flow_run_states(home: pathlib.Path) -> dict[str, int]:
    con = sqlite3.connect(home / "prefect.db")
    try:
        rows = con.execute("select fr.state_type, count(*) from flow_run fr join flow f on f.id = fr.flow_id "
                           "where f.name = 'medflow-pipeline' group by fr.state_type").fetchall()
        return {str(k): v for k, v in rows}
    finally:
        con.close()


def _runs(home: pathlib.Path) -> tuple[int, str | None]:
    """(number of pipeline flow runs, state type of the newest) in this Prefect home; (0, None) before it exists."""
    if not (home / "prefect.db").exists():
        return 0, None
    try:
        con = sqlite3.connect(home / "prefect.db")
        try:
            rows = con.execute("select fr.state_type from flow_run fr join flow f on f.id = fr.flow_id "
                               "where f.name = 'medflow-pipeline' order by fr.created").fetchall()
        finally:
            con.close()
    except sqlite3.Error:  # being created or migrated
        return 0, None
    return len(rows), (str(rows[-1][0]) if rows else None)


def _flow_running(home: pathlib.Path, runs_before: int) -> bool:
    """The run under test has created its flow run and it is Running."""
    n, newest = _runs(home)
    return n > runs_before and newest == "RUNNING"


def reference(source: pathlib.Path, work: pathlib.Path) -> dict:
    ws, home = work / "reference-ws", work / "reference-home"
    t0 = time.monotonic()
    proc = _start(source, ws, home, work / "reference.log")
    segments: dict[str, list[float]] = {}
    current, since = None, time.monotonic()
    while proc.poll() is None:
        st = stage_now(ws)
        now = time.monotonic()
        if st != current:
            if current is not None:
                segments.setdefault(current, []).append(now - since)
            current, since = st, now
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed ({proc.returncode}); see {work / 'reference.log'}")
    missing = [s for s in STAGES if s not in segments]
    if missing:
        raise SystemExit(f"the reference run never showed stage(s) {missing}")
    # a kill lands within a typical stretch of the stage
    windows = {s: sorted(segments[s])[len(segments[s]) // 2] for s in STAGES}
    return {"workspace": ws, "seconds": round(time.monotonic() - t0, 1), "windows": windows,
            "digests": digests(ws), "catalog": catalog_counts(ws)}


def _progress(work: pathlib.Path, entry: dict) -> None:
    with open(work / "progress.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def run_cycle(source: pathlib.Path, work: pathlib.Path, cycle: int, kills_left: int, rng: random.Random,
              windows: dict[str, float], home: pathlib.Path, log: list[dict]) -> pathlib.Path:
    ws = work / f"cycle{cycle}-ws"
    for stage in STAGES:
        if kills_left <= 0:
            break
        completed_before = flow_run_states(home).get("COMPLETED", 0) if (home / "prefect.db").exists() else 0
        runs_before = _runs(home)[0]
        proc = _start(source, ws, home, work / f"cycle{cycle}.log")
        # the stage is at work, in this run: the workspace alone can say "the stage after the newest finished
        # artifact" while the new process is still starting (no flow run yet: a kill then tests nothing)
        while proc.poll() is None and (stage_now(ws) != stage or not _flow_running(home, runs_before)):
            time.sleep(0.02)
        if proc.poll() is not None:  # the stage had nothing left to do in this run (all cached): next stage
            log.append({"cycle": cycle, "target": stage, "killed": False, "exit": proc.returncode})
            continue
        delay = rng.uniform(0.0, 0.9 * windows[stage])
        time.sleep(delay)
        if proc.poll() is not None:
            log.append({"cycle": cycle, "target": stage, "killed": False, "exit": proc.returncode})
            continue
        hit = [st] if (st := stage_now(ws)) else []
        writing = sorted(_staging(ws))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # a kill can land after the flow run reported Completed (the process was exiting): nothing to mark
        after_completion = flow_run_states(home).get("COMPLETED", 0) > completed_before
        kills_left -= 1
        _progress(work, {"cycle": cycle, "target": stage, "at_work": hit, "delay_s": round(delay, 3)})
        log.append({"cycle": cycle, "target": stage, "killed": True, "delay_s": round(delay, 3),
                    "after_completion": after_completion,
                    "stages_at_work": hit, "writing": writing,
                    "partial_artifacts": partial_artifacts(ws)})
    final = _start(source, ws, home, work / f"cycle{cycle}.log")
    if final.wait() != 0:
        raise SystemExit(f"rerun after kills failed in cycle {cycle}; see {work / f'cycle{cycle}.log'}")
    return ws


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", type=pathlib.Path, default=ROOT / "sample" / "ibsi_sts" / "dicom")
    ap.add_argument("--work", type=pathlib.Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=pathlib.Path, default=None, help="also write the summary here")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--code", type=pathlib.Path, default=ROOT,
                    help="medflow checkout the runs import (e.g. a 'git archive' snapshot; default: this one)")
    args = ap.parse_args(argv)
    if args.kills < 1:
        ap.error(f"--kills must be >= 1, got {args.kills}")
    if not args.source.is_dir():
        ap.error(f"--source folder does not exist: {args.source}")
    CODE[0] = args.code.resolve()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="medflow-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    home = work / "harness-home"
    server = start_server(home, work / "server.log")
    try:
        return _harness(args, work, rng, home, t0)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _harness(args: argparse.Namespace, work: pathlib.Path, rng: random.Random, home: pathlib.Path, t0: float) -> int:
    ref = reference(args.source, work)
    log: list[dict] = []
    mismatches: list[str] = []
    staging_left: list[int] = []
    cycle = 0
    while sum(e["killed"] for e in log) < args.kills:
        before = sum(e["killed"] for e in log)
        ws = run_cycle(args.source, work, cycle, args.kills - before, rng, ref["windows"], home, log)
        got = digests(ws)
        for rel in sorted(set(got) | set(ref["digests"])):
            if got.get(rel) != ref["digests"].get(rel):
                mismatches.append(f"cycle {cycle}: {rel}: {'missing' if rel not in got else 'extra' if rel not in ref['digests'] else 'differs'}")
        staging_left.append(leftover_staging(ws))
        _progress(work, {"cycle": cycle, "compared": len(got), "differ": sum(
            got.get(k) != ref["digests"].get(k) for k in set(got) | set(ref["digests"]))})
        counts = catalog_counts(ws)
        if counts != ref["catalog"]:
            mismatches.append(f"cycle {cycle}: catalog counts {counts} != reference {ref['catalog']}")
        partial = partial_artifacts(ws)
        mismatches += [f"cycle {cycle}: partial artifact {p}" for p in partial]
        if sum(e["killed"] for e in log) == before:
            mismatches.append(f"cycle {cycle}: no kill landed (runs too short for the stage windows)")
            break
        cycle += 1
    killed = [e for e in log if e["killed"]]
    mismatches += [f"after kill {i}: partial artifact {p}" for i, e in enumerate(killed) for p in e["partial_artifacts"]]
    states = flow_run_states(home)
    mid_run = [e for e in killed if not e.get("after_completion")]
    if states.get("CRASHED", 0) != len(mid_run):
        mismatches.append(f"{len(mid_run)} runs killed mid-run but {states.get('CRASHED', 0)} marked Crashed "
                          f"({states})")
    if states.get("RUNNING", 0) or states.get("PENDING", 0):
        mismatches.append(f"runs left Running/Pending: {states}")
    stages_hit: dict[str, int] = {}
    for e in killed:
        for s in e["stages_at_work"] or ["between stages"]:
            stages_hit[s] = stages_hit.get(s, 0) + 1
    summary = {
        "kills": len(killed), "kills_after_completion": len(killed) - len(mid_run), "seed": args.seed, "source": str(args.source), "cycles": cycle + 1 if killed else 0,
        "reference_seconds": ref["seconds"], "typical_stage_stretch_s": {k: round(v, 2) for k, v in ref["windows"].items()},
        "targets": {s: sum(1 for e in killed if e["target"] == s) for s in STAGES},
        "stages_at_work_when_killed": stages_hit, "artifact_files_compared": len(ref["digests"]),
        "staging_left_by_kills": staging_left,  # staging folders and temporary files (never read)
        "flow_run_states": states, "catalog": ref["catalog"], "mismatches": mismatches,
        "seconds": round(time.monotonic() - t0, 1), "log": log,
    }
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
