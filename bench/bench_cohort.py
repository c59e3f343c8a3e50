"""End to end on a real cohort: dcm2niix, MIRP and ``medflow run`` side by side, with issue #11's targets.

``python -m bench.bench_cohort [--only PIECES] [--patients N] [--mirp-patients K] [--workdir DIR] [--keep]``

Data: ``../shared/data/sts_cohort/dicom`` (26 patients, CT + PET + MR T1, one RTSTRUCT
GTV per series: 78 series with 78 reference ROIs). ``--patients N`` uses the first N
patients (sorted) for a quick smoke run. Every tool reads a private copy of the same
files (made untimed, which also warms the page cache for all of them).

Pieces (``--only`` takes a comma-separated subset; default all, in this order):

``dcm2niix``
    ``dcm2niix -z n`` and ``-z y`` on the whole folder (Debian package), files/s.
``collect``
    ``medflow ingest`` (collection only) on the whole folder; files/s over the flow's
    wall time (Prefect's start-up excluded, reported separately).
``mirp``
    MIRP 2.7.0 on the DICOM + RTSTRUCT of the first ``--mirp-patients`` patients (all
    three modalities each), the feature settings of :mod:`bench.bench_features`, 2 joblib
    processes (:mod:`bench.mirp_cohort`, its own process). Compared per ROI when it runs
    on fewer patients than medflow (labelled so in the table).
``reference``
    ``medflow run`` with MIRP's workload: reference ROIs only (no automatic
    segmentation), the same feature settings as MIRP (:func:`medflow_reference_config`);
    cold. Its feature values are compared with MIRP's on the shared ROIs.
``medflow``
    ``medflow run`` with the defaults (no config file): cold on all but the last 2
    patients, then with the 2 added (incremental), then a fully cached rerun.
``rss5``
    ``medflow run`` with the defaults, cold, on the first 5 patients: the peak RSS for
    the memory-growth ratio.

Every tool is measured the same way: the collection rows (dcm2niix -z n, -z y, ``medflow
ingest``) first ``--warmup`` untimed rounds (default 1: the one-time costs of a fresh clone,
such as numba's on-disk compile caches and ``.pyc`` files, or a binary's first load; printed
and kept in the results apart from the medians), then ``--repeat`` times each (default 3),
round-robin so that a drift of the machine's speed touches every tool alike, each figure the
median run (all values are kept); the
``medflow run`` and MIRP rows once each (minutes per run), each as a subprocess whose process tree (parent + all children: joblib workers,
Prefect's server) is sampled for peak RSS every 0.1 s. For ``medflow run`` the stage
breakdown comes from the run's Prefect database (a private ``PREFECT_HOME``): task
bodies per task name, the flow's wall time, and orchestration = flow wall time minus
the time covered by task bodies; Prefect start-up = process wall time minus flow wall
time (imports, the ephemeral API's start and the shut-down after the flow). A fixed bench-only ``MEDFLOW_SECRET_KEY`` makes the pseudonymous patient keys
reproducible, so medflow's rows can be paired with MIRP's.

Rows go to ``bench/results.json`` (``benchmark = "bench_cohort"``); the targets table
of issue #11 is printed with PASS/FAIL per row (a row whose inputs were not measured
in this run says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from bench._common import machine_facts, run_measured, skip

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sts_cohort" / "dicom"
PIECES = ("dcm2niix", "collect", "mirp", "reference", "medflow", "rss5")
#: fixed, bench-only pseudonymisation secret (never a real one): reproducible patient keys
BENCH_SECRET = "medflow-bench-cohort-secret-0001"
MODALITY_KEYS = {"CT": "CT", "PT": "PET", "MR": "MR"}  # DICOM modality -> bench_features settings key


# ----------------------------------------------------------------------------------------------- helpers
def du(path: pathlib.Path) -> int:
    """Bytes of all regular files under ``path`` (symlinks not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def count_files(path: pathlib.Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def copy_patients(patients: list[pathlib.Path], dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in patients:
        shutil.copytree(p, dest / p.name)
    return dest


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _seconds(interval: str | None) -> float:
    """Prefect stores a run time as a timestamp after the epoch ('1970-01-01 00:01:24.77')."""
    if not interval:
        return 0.0
    return datetime.fromisoformat(interval).timestamp() - datetime.fromisoformat("1970-01-01 00:00:00").timestamp()


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by at least one of the ``(start, end)`` intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s  # type: ignore[operator]
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s  # type: ignore[operator]
    return total


def stage_name(task_run_name: str | None) -> str:
    """Task run name without Prefect's random suffix and without a pseudonymous volume/patient key."""
    base = re.sub(r"-[0-9a-f]{3}$", "", task_run_name or "?")
    return re.sub(r"-(R[A-Z0-9]{6,}v\d+|[PR][A-Z0-9]{6,})$", "", base)


def flow_breakdown(prefect_db: pathlib.Path) -> dict[str, Any]:
    """Stage breakdown of the latest flow run (and its subflows) in a Prefect SQLite database.

    Returns the flow's wall time, the task runs per task name (count, states, summed
    body seconds), the time covered by task bodies and the orchestration time (flow
    wall time minus that).
    """
    if not prefect_db.is_file():
        return {"error": f"no Prefect database at {prefect_db}"}
    con = sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT id, start_time, end_time, state_type FROM flow_run "
                          "WHERE parent_task_run_id IS NULL ORDER BY created DESC LIMIT 1").fetchone()
        if row is None:
            return {"error": "no flow run recorded"}
        flow_id, f_start, f_end, f_state = row
        # this flow run and any subflow runs it started
        ids = [flow_id]
        frontier = [flow_id]
        while frontier:
            q = ",".join("?" * len(frontier))
            sub = con.execute(f"SELECT fr.id FROM flow_run fr JOIN task_run tr ON fr.parent_task_run_id = tr.id "
                              f"WHERE tr.flow_run_id IN ({q})", frontier).fetchall()
            frontier = [r[0] for r in sub]
            ids += frontier
        q = ",".join("?" * len(ids))
        tasks = con.execute(f"SELECT name, state_name, start_time, end_time, total_run_time FROM task_run "
                            f"WHERE flow_run_id IN ({q})", ids).fetchall()
    finally:
        con.close()
    wall = (_ts(f_end) or 0.0) - (_ts(f_start) or 0.0) if f_start and f_end else None
    stages: dict[str, dict[str, Any]] = {}
    intervals = []
    for name, state, start, end, run_time in tasks:
        base = stage_name(name)
        st = stages.setdefault(base, {"tasks": 0, "body_s": 0.0, "states": {}})
        st["tasks"] += 1
        st["states"][state] = st["states"].get(state, 0) + 1
        st["body_s"] += _seconds(run_time)
        if start and end:
            intervals.append((_ts(start), _ts(end)))
    covered = union_seconds(intervals)  # type: ignore[arg-type]
    for st in stages.values():
        st["body_s"] = round(st["body_s"], 3)
    n = len(tasks)
    out: dict[str, Any] = {"flow_state": f_state, "flow_wall_s": round(wall, 3) if wall is not None else None,
                           "tasks": n, "task_bodies_sum_s": round(sum(s["body_s"] for s in stages.values()), 3),
                           "task_bodies_covered_s": round(covered, 3), "stages": stages}
    if wall is not None:
        out["orchestration_s"] = round(wall - covered, 3)
        out["orchestration_fraction_of_flow"] = round((wall - covered) / wall, 4) if wall > 0 else None
        out["flow_wall_per_task_ms"] = round(1000 * wall / n, 2) if n else None
    return out


_SUMMARY_RE = {
    "volumes": re.compile(r"volumes:\s*(\d+)"),
    "masks": re.compile(r"masks:\s*(\d+)"),
    "quarantined": re.compile(r"quarantined:\s*(\d+)"),
    "tasks": re.compile(r"tasks:\s*(\d+)\s*\((\d+) ran, (\d+) from cache\)"),
    "features": re.compile(r"^features:\s*(\S.*)$", re.M),
}


def parse_summary(stdout: str) -> dict[str, Any]:
    """The figures ``medflow run`` prints (volumes, masks, quarantined, tasks ran/cached, feature table)."""
    out: dict[str, Any] = {}
    for key in ("volumes", "masks", "quarantined"):
        m = _SUMMARY_RE[key].search(stdout)
        if m:
            out[key] = int(m.group(1))
    m = _SUMMARY_RE["tasks"].search(stdout)
    if m:
        out["cli_tasks"], out["cli_ran"], out["cli_cached"] = (int(g) for g in m.groups())
    m = _SUMMARY_RE["features"].search(stdout)
    if m:
        out["features_path"] = m.group(1).strip()
    return out


class Medflow:
    """Runs the ``medflow`` CLI as a user would, with a private Prefect home and a fixed bench secret."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.exe = str(pathlib.Path(sys.executable).with_name("medflow"))
        if not pathlib.Path(self.exe).exists():
            self.exe = shutil.which("medflow") or self.exe
        self.home = workdir / "prefect-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PREFECT_HOME": str(self.home), "MEDFLOW_SECRET_KEY": BENCH_SECRET,
                    "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        # a loaded 2-core machine can take longer than Prefect's default 20 s to start the ephemeral API
        self.env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        self.init_db()

    def init_db(self) -> None:
        """Create the private Prefect database untimed, so the first measured run does not pay its migrations."""
        code = ("import asyncio\n"
                "from prefect.server.database import provide_database_interface\n"
                "asyncio.run(provide_database_interface().create_db())\n")
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:  # not fatal: the first run then creates it (and its start-up says so)
            print(f"note: Prefect database not pre-created ({proc.stderr.strip().splitlines()[-1:]})", flush=True)

    def __call__(self, command: str, source: pathlib.Path, workspace: pathlib.Path,
                 config: pathlib.Path | None = None) -> dict[str, Any]:
        cmd = [self.exe, command, str(source), "--workspace", str(workspace)]
        if config is not None:
            cmd += ["--config", str(config)]
        res = run_measured(cmd, env=self.env, cwd=str(REPO))
        if res["returncode"] != 0:
            tail = (res["stderr"] or res["stdout"]).strip().splitlines()[-5:]
            raise RuntimeError(f"medflow {command} failed (exit {res['returncode']}): " + " | ".join(tail))
        out = {"seconds": round(res["seconds"], 3), "peak_rss_bytes": res["peak_rss_bytes"],
               "max_processes": res["max_processes"], **parse_summary(res["stdout"])}
        fb = flow_breakdown(self.home / "prefect.db")
        out["flow"] = fb
        if fb.get("flow_wall_s") is not None:
            out["prefect_startup_s"] = round(res["seconds"] - fb["flow_wall_s"], 3)
        if workspace.is_dir():
            out["workspace_bytes"] = du(workspace)
        return out


def medflow_reference_config() -> dict[str, Any]:
    """``medflow run`` config with MIRP's workload: reference ROIs only, bench_features' settings per modality."""
    from bench.bench_features import MEDFLOW_SETTINGS

    settings = {dicom: MEDFLOW_SETTINGS[key].model_dump(mode="json", exclude_defaults=True)
                for dicom, key in MODALITY_KEYS.items()}
    return {"processing": {"segment_when_reference_exists": False},
            "analysis": {"include_auto_masks": False, "settings": settings}}


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median of ``runs`` (the lower middle one for an even count), with every value.

    A whole run is returned (not a mean of fields), so its figures stay consistent with each other.
    """
    valid = [r for r in runs if r.get(key) is not None]
    if not valid:
        return dict(runs[-1]) if runs else {}
    ordered = sorted(valid, key=lambda r: r[key])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out.update(runs_of=len(valid), median_of=out[key], all=[r[key] for r in valid])
    return out


def dcm2niix(source: pathlib.Path, out: pathlib.Path, gz: bool) -> dict[str, Any]:
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise FileNotFoundError("dcm2niix is not installed (Debian package dcm2niix; scripts/bench-peers.sh)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    res = run_measured([exe, "-z", "y" if gz else "n", "-f", "%i_%s_%d", "-o", str(out), str(source)])
    if res["returncode"] not in (0,):
        raise RuntimeError(f"dcm2niix failed (exit {res['returncode']}): {res['stderr'][-300:]}")
    return {"seconds": round(res["seconds"], 3), "peak_rss_bytes": res["peak_rss_bytes"],
            "outputs": sum(1 for p in out.iterdir() if p.name.endswith((".nii", ".nii.gz"))),
            "output_bytes": du(out)}


# ----------------------------------------------------------------------------------------------- agreement
def agreement(medflow_features: pathlib.Path, mirp_csv: pathlib.Path) -> dict[str, Any]:
    """Largest relative difference medflow vs MIRP over bench_features' AGREEMENT features on shared ROIs.

    Also per modality: each tool rasterises the RTSTRUCT itself here (in ``bench_features`` both
    read the same NIfTI masks and agree to 1e-7). On the sts data CT agrees exactly, while
    MIRP 2.7.0's own RTSTRUCT-to-mask path gives PET/MR masks that differ from the IBSI reference
    masks (checked on STS_008: MIRP run on the reference NIfTI masks gives medflow's values to the
    printed digit, morph.vol PET 27,082.3 and MR 27,661.7 mm^3, where MIRP from DICOM gives 26,171.0 and
    26,979.0); medflow's rasterisation equals those reference masks (``tests/test_rtstruct.py``, Dice 1.0).
    """
    import pandas as pd

    from bench.bench_features import AGREEMENT
    from storage.pseudonym import PseudonymKeys

    mf = pd.read_parquet(medflow_features)
    mi = pd.read_csv(mirp_csv)
    keys = PseudonymKeys(BENCH_SECRET)
    if "roi_source" in mf.columns:
        mf = mf[mf["roi_source"].astype(str).str.contains("reference|rtstruct", case=False, regex=True)
                | mf["roi_source"].isna()]
    if "image" in mf.columns:
        mf = mf[mf["image"] == "original"]
    worst, pairs, per_feature, per_modality = 0.0, 0, {}, {}
    for _, r in mi.iterrows():
        pkey = keys.patient_key(str(r["sample"]))
        dicom_mod = {v: k for k, v in MODALITY_KEYS.items()}[r["modality"]]
        sel = mf[(mf["patient_key"] == pkey) & (mf["modality"] == dicom_mod)]
        if sel.empty:
            continue
        pairs += 1
        for key, agg, prefix in AGREEMENT:
            col = next((c for c in mi.columns if c.startswith(prefix)), None)
            fam, _, feat = key.partition(".")
            hit = sel[(sel["feature"].astype(str).isin([key, feat])) & (sel["aggregation"].fillna("") == agg)]
            if col is None or hit.empty:
                continue
            a, b = float(hit["value"].iloc[0]), float(r[col])
            rel = abs(a - b) / max(abs(b), 1e-12)
            per_feature[key] = max(per_feature.get(key, 0.0), rel)
            per_modality[dicom_mod] = max(per_modality.get(dicom_mod, 0.0), rel)
            worst = max(worst, rel)
    return {"rois_compared": pairs, "features": [a[0] for a in AGREEMENT], "max_rel_diff": worst,
            "max_rel_diff_per_feature": per_feature, "max_rel_diff_per_modality": per_modality}


# ----------------------------------------------------------------------------------------------- targets
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #11's targets, each with the measured value and PASS/FAIL (or 'not measured')."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool, detail: str) -> None:
        if value is None:
            rows.append({"target": name, "value": None, "limit": limit, "status": "not measured", "detail": detail})
            return
        ok = value >= limit if higher_is_better else value <= limit
        rows.append({"target": name, "value": round(value, 4), "limit": limit, "status": "PASS" if ok else "FAIL",
                     "detail": detail})

    d = res.get("dcm2niix", {})
    col = res.get("collect", {})
    fps = col.get("files_per_s_flow")
    zy, zn = d.get("z_y", {}).get("files_per_s"), d.get("z_n", {}).get("files_per_s")
    add("collection files/s >= 1x dcm2niix -z y", fps / zy if fps and zy else None, 1.0, True,
        f"medflow ingest {fps and round(fps)} files/s (flow wall) vs dcm2niix -z y {zy and round(zy)} files/s")
    add("collection files/s >= 0.25x dcm2niix -z n", fps / zn if fps and zn else None, 0.25, True,
        f"medflow ingest {fps and round(fps)} files/s vs dcm2niix -z n {zn and round(zn)} files/s")
    mirp = res.get("mirp", {})
    m_per_roi = mirp.get("seconds_per_roi")
    label = "" if mirp.get("patients") == res.get("n_patients") else \
        f" (MIRP on {mirp.get('patients')} patients, per-ROI rate)"
    ref = res.get("reference", {})
    r_per_roi = ref.get("seconds_per_roi")
    add("medflow run, MIRP's workload >= 5x MIRP" + label, m_per_roi / r_per_roi if m_per_roi and r_per_roi else None,
        5.0, True, f"MIRP {m_per_roi and round(m_per_roi, 2)} s/ROI vs medflow {r_per_roi and round(r_per_roi, 2)} s/ROI "
                   "(end-to-end process wall time / reference ROIs)")
    cold = res.get("medflow", {}).get("cold", {})
    c_per_roi = cold.get("seconds_per_reference_roi")
    add("medflow run, defaults >= 2x MIRP" + label, m_per_roi / c_per_roi if m_per_roi and c_per_roi else None, 2.0,
        True, f"MIRP {m_per_roi and round(m_per_roi, 2)} s/ROI vs medflow defaults "
              f"{c_per_roi and round(c_per_roi, 2)} s per reference ROI")
    flow = cold.get("flow", {})
    frac = flow.get("orchestration_s") / cold["seconds"] if flow.get("orchestration_s") is not None else None
    add("orchestration <= 5% of a cold cohort run", frac, 0.05, False,
        f"flow wall {flow.get('flow_wall_s')} s - task bodies {flow.get('task_bodies_covered_s')} s = "
        f"{flow.get('orchestration_s')} s of {cold.get('seconds')} s; Prefect start-up {cold.get('prefect_startup_s')} s "
        "reported separately")
    cached = res.get("medflow", {}).get("cached", {})
    wall, units = cached.get("flow", {}).get("flow_wall_s"), cached.get("cli_tasks")
    # a cache unit is what a rerun skips: a step of a volume chain (checked by the flow itself when the whole
    # chain is cached) or a stage task (collect, discover, report); the whole flow wall time is charged to them
    ms = round(1000 * wall / units, 2) if wall and units else None
    add("<= 10 ms per task on a fully cached rerun, per cache unit", ms, 10.0, False,
        f"flow wall {wall} s / {units} cache units ({cached.get('cli_cached')} cached; "
        f"{cached.get('flow', {}).get('tasks')} Prefect task runs, "
        f"{cached.get('flow', {}).get('flow_wall_per_task_ms')} ms of flow wall each); "
        f"process wall {cached.get('seconds')} s incl. start-up")
    big = max((r.get("peak_rss_bytes") or 0 for r in (cold, res.get("medflow", {}).get("added", {}))), default=0)
    small = res.get("rss5", {}).get("peak_rss_bytes")
    add("peak RSS of the cohort run <= 1.2x a 5-patient run", big / small if big and small else None, 1.2, False,
        f"{big / 2**30 if big else 0:.2f} GiB (largest of the cold and the +2 runs) vs "
        f"{(small or 0) / 2**30:.2f} GiB (5 patients)")
    ws, dicom = res.get("medflow", {}).get("workspace_bytes"), res.get("dicom_bytes")
    add("workspace size after a default run <= 0.6x the DICOM input", ws / dicom if ws and dicom else None, 0.6, False,
        f"{(ws or 0) / 1e6:.0f} MB workspace / {(dicom or 0) / 1e6:.0f} MB DICOM")
    return rows


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=pathlib.Path, default=DATA, help="folder of <patient>/<modality>/{image,mask}")
    ap.add_argument("--only", default=",".join(PIECES), help=f"comma-separated subset of {','.join(PIECES)}")
    ap.add_argument("--patients", type=int, default=None, help="use the first N patients (default: all)")
    ap.add_argument("--mirp-patients", type=int, default=4,
                    help="MIRP runs on the first K patients (3 ROIs each); 0 = all. Compared per ROI.")
    ap.add_argument("--mirp-cpus", type=int, default=2)
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="parent of the temporary folder")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each collection tool (dcm2niix -z n/-z y, medflow ingest), round-robin; medians")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed rounds of every collection tool before the timed ones (one-time costs of a fresh "
                         "clone or binary: numba's on-disk compile caches, .pyc files, the first load)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (copies, workspaces)")
    ap.add_argument("--no-write", action="store_true", help="do not merge rows into bench/results.json")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    pieces = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(pieces) - set(PIECES))
    if unknown:
        raise SystemExit(f"--only: unknown piece(s) {unknown}; choose from {','.join(PIECES)}")
    if not args.data.is_dir():
        skip(f"cohort data not found at {args.data}")
    patients = sorted(p for p in args.data.iterdir() if p.is_dir())
    if args.patients:
        patients = patients[: args.patients]
    if not patients:
        skip(f"no patient folders in {args.data}")

    root = pathlib.Path(tempfile.mkdtemp(prefix="medflow-bench-cohort-", dir=args.workdir))
    res: dict[str, Any] = {"n_patients": len(patients), "pieces": pieces}
    print(f"{len(patients)} patients from {args.data}; pieces {','.join(pieces)}; work in {root}", flush=True)
    try:
        t0 = time.perf_counter()
        full = copy_patients(patients, root / "src-all")  # untimed; also warms the page cache for every tool
        res["dicom_files"] = count_files(full)
        res["dicom_bytes"] = du(full)
        print(f"copied {res['dicom_files']} files, {res['dicom_bytes'] / 1e6:.0f} MB in "
              f"{time.perf_counter() - t0:.1f} s (untimed)", flush=True)
        mf = Medflow(root)
        failures: dict[str, str] = {}

        @contextlib.contextmanager
        def guard(name: str) -> Iterator[None]:
            """A piece that fails is recorded and reported; the other pieces still run."""
            try:
                yield
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                failures[name] = f"{type(exc).__name__}: {exc}"
                res.setdefault(name, {})["failed"] = failures[name]
                print(f"{name} FAILED: {failures[name]}", flush=True)

        # the collection rows: every tool run --repeat times, round-robin (a drift of the machine's speed
        # touches all of them alike), each figure the median of its runs; every run is kept in the results
        zn_runs: list[dict[str, Any]] = []
        zy_runs: list[dict[str, Any]] = []
        ingest_runs: list[dict[str, Any]] = []
        warm: dict[str, list[float]] = {"dcm2niix -z n": [], "dcm2niix -z y": [], "medflow ingest (flow)": []}
        rounds = args.warmup + args.repeat if {"dcm2niix", "collect"} & set(pieces) else 0
        for k in range(rounds):
            timed = k >= args.warmup  # the warm-up rounds: every tool alike, printed, kept apart from the medians
            label = f"[{k - args.warmup + 1}/{args.repeat}]" if timed else f"[warm-up {k + 1}/{args.warmup}]"
            if "dcm2niix" in pieces and "dcm2niix" not in failures and "skipped" not in res.get("dcm2niix", {}):
                with guard("dcm2niix"):
                    try:
                        for gz, runs in ((False, zn_runs), (True, zy_runs)):
                            r = dcm2niix(full, root / f"dcm2niix-{'zy' if gz else 'zn'}", gz)
                            r["files_per_s"] = round(res["dicom_files"] / r["seconds"], 1)
                            if timed:
                                runs.append(r)
                            else:
                                warm[f"dcm2niix -z {'y' if gz else 'n'}"].append(r["seconds"])
                            print(f"{label} dcm2niix -z {'y' if gz else 'n'}: {r['seconds']:.2f} s, "
                                  f"{r['files_per_s']:.0f} files/s, {r['outputs']} NIfTI", flush=True)
                        if timed:
                            res["dcm2niix"] = {"z_n": median_run(zn_runs, "seconds"),
                                               "z_y": median_run(zy_runs, "seconds")}
                    except FileNotFoundError as exc:  # not installed: skipped with the reason (a crash is a failure)
                        res["dcm2niix"] = {"skipped": str(exc)}
                        print(f"dcm2niix skipped: {exc}", flush=True)
            if "collect" in pieces and "collect" not in failures:
                with guard("collect"):
                    ws = root / "ws-ingest"
                    if ws.exists():
                        shutil.rmtree(ws)  # every run cold
                    r = mf("ingest", full, ws)
                    wall = r["flow"].get("flow_wall_s")
                    r["flow_wall_s"] = wall
                    r["files_per_s_process"] = round(res["dicom_files"] / r["seconds"], 1)
                    r["files_per_s_flow"] = round(res["dicom_files"] / wall, 1) if wall else None
                    if timed:
                        ingest_runs.append(r)
                        res["collect"] = median_run(ingest_runs, "flow_wall_s")
                    else:
                        warm["medflow ingest (flow)"].append(wall)
                    inside = r["flow"].get("task_bodies_covered_s")
                    print(f"{label} medflow ingest: {r['seconds']:.1f} s process "
                          f"({r['files_per_s_process']:.0f} files/s), flow {wall} s ({r['files_per_s_flow']} files/s): "
                          f"collect task {inside} s, the rest of the flow {r['flow'].get('orchestration_s')} s "
                          f"(source fingerprint, task start, registration); volumes {r.get('volumes')}", flush=True)
        if any(warm.values()):
            res["collection_warmup_s"] = {name: values for name, values in warm.items() if values}
            print("warm-up rounds (untimed, not in the medians): " + "; ".join(
                f"{name} {values}" for name, values in res["collection_warmup_s"].items()), flush=True)
        for name, label, key in (("dcm2niix", "dcm2niix -z n", "z_n"), ("dcm2niix", "dcm2niix -z y", "z_y"),
                                 ("collect", "medflow ingest (flow)", None)):
            row = res.get(name, {}).get(key) if key else res.get(name)
            if row and row.get("runs_of") and row["runs_of"] > 1:
                print(f"median of {row['runs_of']} runs, {label}: {row['median_of']} s (all: {row['all']})", flush=True)

        if "mirp" in pieces:
            with guard("mirp"):
                k = args.mirp_patients or len(patients)
                sub = copy_patients(patients[:k], root / "src-mirp")
                csv = root / "mirp-features.csv"
                try:
                    import mirp  # noqa: F401
                except ImportError as exc:
                    res["mirp"] = {"skipped": f"MIRP not installed ({exc}); scripts/bench-peers.sh installs mirp==2.7.0"}
                    print(res["mirp"]["skipped"], flush=True)
                else:
                    r = run_measured([sys.executable, "-m", "bench.mirp_cohort", "--source", str(sub), "--out", str(csv),
                                      "--num-cpus", str(args.mirp_cpus)], cwd=str(REPO), env={**os.environ})
                    if r["returncode"] != 0:
                        raise RuntimeError(f"MIRP failed: {r['stderr'][-500:]}")
                    import pandas as pd

                    n = len(pd.read_csv(csv))
                    res["mirp"] = {"patients": k, "rois": n, "processes": args.mirp_cpus, "backend": "joblib",
                                   "seconds": round(r["seconds"], 3), "seconds_per_roi": round(r["seconds"] / n, 3),
                                   "peak_rss_bytes": r["peak_rss_bytes"], "max_processes": r["max_processes"],
                                   "log": r["stdout"].strip().splitlines()}
                    print(f"MIRP on {k} patients: {n} ROIs in {r['seconds']:.1f} s ({r['seconds'] / n:.1f} s/ROI, "
                          f"{args.mirp_cpus} processes)", flush=True)

        if "reference" in pieces:
            with guard("reference"):
                cfg = root / "reference.yaml"
                cfg.write_text(json.dumps(medflow_reference_config(), indent=2))  # JSON is YAML
                r = mf("run", full, root / "ws-reference", cfg)
                r["reference_rois"] = 3 * len(patients)
                r["seconds_per_roi"] = round(r["seconds"] / r["reference_rois"], 3)
                r["config"] = medflow_reference_config()
                res["reference"] = r
                print(f"medflow run (MIRP's workload): {r['seconds']:.1f} s, {r['seconds_per_roi']:.2f} s/ROI, "
                      f"tasks {r.get('cli_tasks')}, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
                csv = root / "mirp-features.csv"
                if csv.is_file() and r.get("features_path"):
                    res["agreement"] = agreement(pathlib.Path(r["features_path"]), csv)
                    a = res["agreement"]
                    print(f"medflow vs MIRP on {a['rois_compared']} ROIs: max relative difference "
                          f"{a['max_rel_diff']:.2e} over {', '.join(a['features'])}; by modality "
                          + ", ".join(f"{k} {v:.2e}" for k, v in sorted(a["max_rel_diff_per_modality"].items()))
                          + " (each tool rasterises the RTSTRUCT itself: see agreement())", flush=True)

        if "medflow" in pieces:
            with guard("medflow"):
                m: dict[str, Any] = {}
                n_first = max(1, len(patients) - 2)
                src = copy_patients(patients[:n_first], root / "src-grow")
                ws = root / "ws-defaults"
                m["cold"] = mf("run", src, ws)
                m["cold"]["patients"] = n_first
                m["cold"]["seconds_per_reference_roi"] = round(m["cold"]["seconds"] / (3 * n_first), 3)
                if len(patients) > n_first:
                    copy_patients(patients[n_first:], src)
                    m["added"] = mf("run", src, ws)
                    m["added"]["patients"] = len(patients)
                m["cached"] = mf("run", src, ws)
                m["workspace_bytes"] = du(ws)
                m["dicom_bytes"] = du(src)
                res["medflow"] = m
                for k2, r in m.items():
                    if isinstance(r, dict):
                        vpm = r.get("volumes", 0) / (r["seconds"] / 60) if r.get("volumes") else None
                        r["volumes_per_min"] = round(vpm, 2) if vpm else None
                        print(f"medflow run defaults, {k2}: {r['seconds']:.1f} s, tasks {r.get('cli_tasks')} "
                              f"({r.get('cli_ran')} ran, {r.get('cli_cached')} cached), flow {r['flow'].get('flow_wall_s')} s, "
                              f"orchestration {r['flow'].get('orchestration_s')} s, start-up {r.get('prefect_startup_s')} s, "
                              f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
                print(f"workspace {m['workspace_bytes'] / 1e6:.0f} MB for {m['dicom_bytes'] / 1e6:.0f} MB of DICOM",
                      flush=True)

        if "rss5" in pieces:
            with guard("rss5"):
                src5 = copy_patients(patients[:5], root / "src-5")
                r = mf("run", src5, root / "ws-5")
                r["patients"] = min(5, len(patients))
                res["rss5"] = r
                print(f"medflow run defaults, {r['patients']} patients: {r['seconds']:.1f} s, peak RSS "
                      f"{r['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)

        res["targets"] = targets(res)
        print(f"\ntargets (issue #11), {len(patients)} patients, machine: {os.cpu_count()} cores")
        for t in res["targets"]:
            v = "-" if t["value"] is None else f"{t['value']:.3g}"
            print(f"  {t['status']:12s} {t['target']:62s} {v:>8s} (limit {t['limit']})  {t['detail']}")
        if "medflow" in res:
            print("\nstage breakdown of the cold default run (task name: tasks, summed body s):")
            for name, st in sorted(res["medflow"]["cold"]["flow"].get("stages", {}).items(),
                                   key=lambda kv: -kv[1]["body_s"]):
                print(f"  {name:28s} {st['tasks']:4d} {st['body_s']:9.1f} s  {st['states']}")
        if not args.no_write:
            from bench._results import merge_results

            rows = [{"operation": f"cohort_{len(patients)}p_{t['target']}", "tool": "medflow", "value": t["value"],
                     "limit": t["limit"], "status": t["status"], "detail": t["detail"]} for t in res["targets"]]
            rows.append({"operation": f"cohort_{len(patients)}p_measurements", "tool": "all", "result": res})
            merge_results(rows, benchmark="bench_cohort",
                          run_facts={"policy": f"collection rows: {args.warmup} untimed warm-up round(s), then the median of "
                                               f"{args.repeat} round-robin runs per tool; "
                                               "medflow run / MIRP rows: one run each; subprocess, page cache warmed by "
                                               "the copy",
                                     "machine_at_start": machine_facts()})
            print("\nmerged into bench/results.json")
        if failures:
            print(f"FAILED pieces: {', '.join(failures)}")
            raise SystemExit(1)
        return res
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
