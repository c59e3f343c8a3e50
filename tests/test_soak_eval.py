"""scripts/soak.py's verdicts (issue #12 item 4) on synthetic samples: no flows run here."""

from __future__ import annotations

import pathlib
import sys

_SCRIPTS = str(pathlib.Path(__file__).resolve().parents[1] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

import soak  # noqa: E402


def _sample(run, kind, *, t, fds, rss=700, files=500, seconds=10.0, tmp=1, extra=()):
    targets = {str(i): f"socket:[{i}]" for i in range(fds - len(extra))}
    targets.update({str(100 + i): x for i, x in enumerate(extra)})
    return {"run": run, "kind": kind, "t": t, "files": files, "seconds": seconds, "cpu_seconds": seconds * 1.5,
            "loadavg_1min": 1.0, "rss_bytes": rss * 2**20,
            "rss_self_bytes": rss * 2**20, "rss_children_bytes": 0, "fds": fds, "fd_kinds": {"socket": fds},
            "fd_targets": targets, "temp_entries": tmp, "leftovers": [], "error": None}


def _runs(n, *, first_pipeline=1, every=6):
    out = []
    for run in range(n):
        kind = "pipeline" if run % every == first_pipeline else "ingest"
        fds = 16 if run < first_pipeline else 20  # the first pipeline run opens its process-wide resources
        out.append(_sample(run, kind, t=10.0 * (run + 1), fds=fds))
    return out


def test_warm_up_covers_the_first_run_of_each_kind():
    assert soak.warmup_runs(_runs(20, first_pipeline=1)) == 3
    assert soak.warmup_runs(_runs(20, first_pipeline=5)) == 6  # an old schedule: warm-up waits for it
    assert soak.warmup_runs([_sample(i, "ingest", t=i, fds=16) for i in range(10)]) == 3


def test_flat_soak_passes_and_reports_every_criterion():
    res = soak.evaluate(_runs(24), minutes=4)
    assert res["ok"], res["checks"]
    assert res["fds_baseline"] == 20 and res["fds_during_warmup"] == [16, 20, 20]
    assert res["fds_above_baseline"] == [] and res["runs_by_kind"] == {"ingest": 20, "pipeline": 4}
    assert res["throughput_ratio"] == res["throughput_cpu_ratio"] == 1.0
    lines = soak.report_lines(res)
    assert len([x for x in lines if x.startswith("PASS")]) == len(res["checks"]) == 6


def test_an_fd_above_the_baseline_fails_and_names_the_fd():
    samples = _runs(24)
    samples[15] = _sample(15, "ingest", t=160.0, fds=21, extra=["/ws-0015/catalog.sqlite (deleted)"])
    res = soak.evaluate(samples, minutes=4)
    assert not res["ok"] and not res["checks"]["fds_back_to_baseline"]
    assert res["fds_above_baseline"] == [{"run": 15, "kind": "ingest", "fds": 21,
                                          "new_targets": ["/ws-0015/catalog.sqlite (deleted)"]}]
    assert any(x.startswith("FAIL  open fds") for x in soak.report_lines(res))


def test_growing_rss_slow_throughput_and_failed_runs_fail():
    samples = _runs(24)
    for s in samples[12:]:
        s["rss_bytes"] = 800 * 2**20  # +14%
    for s in samples[-8:]:
        s["seconds"] = 20.0  # half the throughput
    samples[20]["error"] = "RuntimeError: boom"
    res = soak.evaluate(samples, minutes=4)
    assert not res["checks"]["rss_flat_within_10pct"]
    assert not res["checks"]["throughput_last_ge_0.9_first"]
    assert not res["checks"]["every_run_completed"] and res["failed_runs"] == ["run 20 (ingest): RuntimeError: boom"]


def test_too_few_runs_is_a_failure_with_a_reason():
    res = soak.evaluate(_runs(5), minutes=1)
    assert not res["ok"] and "too few runs" in res["reason"]
    assert soak.report_lines(res)[-1].startswith("FAIL")


def test_warm_up_runs_through_the_first_run_of_each_input_and_later_growth_still_fails():
    keys = [soak.run_input(r, patients_per_run=3, pipeline_every=6, n_patients=26) for r in range(200)]
    assert keys[1] == "pipeline:3" and keys[0] == "ingest:0,1,2" and keys[2] == "ingest:6,7,8"
    last_first = max(keys.index(k) for k in set(keys))
    assert last_first == 73  # 13 distinct pipeline patients, one every 6 runs
    samples = []
    for r, k in enumerate(keys):
        big = r >= 67  # a larger patient first seen at run 67: one-time high-water mark and resources
        samples.append({**_sample(r, k.split(":")[0], t=5.0 * (r + 1), fds=24 if big else 20,
                                  rss=1300 if big else 780), "input": k})
    res = soak.evaluate(samples, minutes=17)
    assert res["warmup_runs"] == 74 and res["ok"], res["checks"]
    samples[150] = {**samples[150], "fds": 25}  # grows again on an input seen before: a leak
    assert not soak.evaluate(samples, minutes=17)["checks"]["fds_back_to_baseline"]
