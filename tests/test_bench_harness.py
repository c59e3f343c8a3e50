"""The benchmark harness itself: timing policy, process-tree RSS, results file, run isolation, cohort accounting."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest

from bench import _common, _results, bench_cohort, run


def test_timed_applies_warmup_setup_and_repeat():
    calls = []
    t = _common.timed(lambda: calls.append("fn") or len(calls), repeat=3, warmup=2,
                      setup=lambda: calls.append("setup"))
    assert calls.count("fn") == 5 and calls.count("setup") == 5
    assert len(t.seconds) == 3 and t.warmup == 2
    assert t.min <= t.median
    assert t.as_dict()["repeat"] == 3
    with pytest.raises(ValueError, match="repeat"):
        _common.timed(lambda: None, repeat=0)


def test_run_measured_counts_children_memory():
    # the child starts a grandchild that holds ~150 MB: the tree's peak must include it
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(150 * 2**20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.5)'])")
    res = _common.run_measured([sys.executable, "-c", code], period=0.05)
    assert res["returncode"] == 0
    assert res["peak_rss_bytes"] > 150 * 2**20
    assert res["max_processes"] >= 2


def test_machine_facts_record_threads():
    facts = _common.machine_facts()
    assert facts["cpu_count"] >= 1
    assert "threadpools" in facts["threads"] and "dask" in facts["threads"]


def test_merge_results_reads_old_format_and_records_run_facts(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"operation": "a", "tool": "x", "mvoxel_per_s": 1.0, "ratio": 1.0}]))
    rows = _results.merge_results([{"operation": "b", "tool": "y", "value": 2}], path, benchmark="bench_t",
                                  run_facts={"policy": "p"})
    assert {(r["operation"], r["tool"]) for r in rows} == {("a", "x"), ("b", "y")}
    data = json.loads(path.read_text())
    assert data["runs"]["bench_t"]["policy"] == "p"
    assert data["runs"]["bench_t"]["machine"]["cpu_count"] >= 1
    assert [r for r in data["rows"] if r["operation"] == "b"][0]["benchmark"] == "bench_t"
    # same (operation, tool) replaces, never duplicates
    _results.merge_results([{"operation": "b", "tool": "y", "value": 3}], path)
    data = json.loads(path.read_text())
    assert [r["value"] for r in data["rows"] if r["operation"] == "b"] == [3]
    with pytest.raises(ValueError, match="missing"):
        _results.merge_results([{"tool": "y"}], path)


def test_run_reports_skips_and_failures_without_stopping(monkeypatch, capsys):
    statuses = {"bench_a": ("failed", 1.0, "exit status 1"), "bench_b": ("skipped", 0.1, "x"),
                "bench_c": ("ok", 2.0, "")}
    seen = []
    monkeypatch.setattr(run, "discover", lambda: sorted(statuses))
    monkeypatch.setattr(run, "run_one", lambda name, timeout: seen.append(name) or statuses[name])
    assert run.main([]) == 1
    assert seen == ["bench_a", "bench_b", "bench_c"]  # the failure did not stop the others
    assert "FAILED: bench_a" in capsys.readouterr().out
    statuses["bench_a"] = ("ok", 1.0, "")
    assert run.main([]) == 0  # a skip is not a failure
    assert run.main(["nomatch"]) == 2


def test_skip_exit_status_is_reported_as_skipped():
    status, _sec, _reason = run.run_one("_does_not_exist_", timeout=60)
    assert status == "failed"  # a missing module is a failure, not a skip
    with pytest.raises(SystemExit) as exc:
        _common.skip("no data")
    assert exc.value.code == _common.SKIP_EXIT


def test_union_of_task_intervals():
    assert bench_cohort.union_seconds([]) == 0
    assert bench_cohort.union_seconds([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4)
    assert bench_cohort.union_seconds([(5, 6), (0, 10)]) == pytest.approx(10)


def _prefect_db(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE flow_run (id TEXT, created TEXT, start_time TEXT, end_time TEXT, state_type TEXT, "
                "parent_task_run_id TEXT)")
    con.execute("CREATE TABLE task_run (id TEXT, flow_run_id TEXT, name TEXT, state_name TEXT, start_time TEXT, "
                "end_time TEXT, total_run_time TEXT)")
    con.execute("INSERT INTO flow_run VALUES ('old', '2026-01-01 00:00:00', '2026-01-01 00:00:00', "
                "'2026-01-01 00:01:00', 'COMPLETED', NULL)")
    con.execute("INSERT INTO flow_run VALUES ('f', '2026-01-02 00:00:00', '2026-01-02 00:00:00', "
                "'2026-01-02 00:00:10', 'COMPLETED', NULL)")
    rows = [("t1", "f", "collect-a1b", "Completed", "2026-01-02 00:00:01", "2026-01-02 00:00:04", "1970-01-01 00:00:03"),
            ("t2", "f", "features-0c2", "Completed", "2026-01-02 00:00:03", "2026-01-02 00:00:06", "1970-01-01 00:00:03"),
            ("t3", "f", "features-9ff", "Cached", None, None, "1970-01-01 00:00:00"),
            ("t4", "old", "collect-a1b", "Completed", "2026-01-01 00:00:01", "2026-01-01 00:00:50",
             "1970-01-01 00:00:49")]
    con.executemany("INSERT INTO task_run VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()


def test_flow_breakdown_latest_run(tmp_path):
    db = tmp_path / "prefect.db"
    _prefect_db(db)
    fb = bench_cohort.flow_breakdown(db)
    assert fb["flow_wall_s"] == pytest.approx(10)
    assert fb["tasks"] == 3  # only the latest flow run's tasks
    assert fb["task_bodies_sum_s"] == pytest.approx(6)
    assert fb["task_bodies_covered_s"] == pytest.approx(5)  # 1..6 s, overlapping bodies counted once
    assert fb["orchestration_s"] == pytest.approx(5)
    assert fb["stages"]["features"]["tasks"] == 2
    assert fb["stages"]["features"]["states"] == {"Completed": 1, "Cached": 1}
    assert bench_cohort.flow_breakdown(tmp_path / "absent.db")["error"]


def test_parse_cli_summary():
    out = ("volumes: 9  masks: 12  quarantined: 0\n  Rabc CT: 2 ROIs, 300 feature values\n"
           "tasks: 40 (3 ran, 37 from cache) in 12.5 s\nreport: /w/reports/report.html\n"
           "features: /w/artifacts/report/ab/abcd/features.parquet\n")
    s = bench_cohort.parse_summary(out)
    assert (s["volumes"], s["masks"], s["quarantined"]) == (9, 12, 0)
    assert (s["cli_tasks"], s["cli_ran"], s["cli_cached"]) == (40, 3, 37)
    assert s["features_path"].endswith("features.parquet")


def test_targets_pass_fail_and_unmeasured():
    res = {"n_patients": 26, "dicom_bytes": 100e6,
           "dcm2niix": {"z_y": {"files_per_s": 100.0}, "z_n": {"files_per_s": 1000.0}},
           "collect": {"files_per_s_flow": 150.0},
           "mirp": {"patients": 4, "seconds_per_roi": 20.0},
           "reference": {"seconds_per_roi": 5.0},
           "medflow": {"cold": {"seconds": 100.0, "seconds_per_reference_roi": 8.0, "peak_rss_bytes": 2 * 2**30,
                                "flow": {"orchestration_s": 4.0, "flow_wall_s": 90, "task_bodies_covered_s": 86}},
                       "cached": {"flow": {"flow_wall_s": 5.0, "tasks": 3}, "cli_tasks": 200, "cli_cached": 200},
                       "workspace_bytes": 50e6}}
    t = {r["target"].split(" (")[0]: r for r in bench_cohort.targets(res)}
    assert t["collection files/s >= 1x dcm2niix -z y"]["status"] == "PASS"
    assert t["collection files/s >= 0.25x dcm2niix -z n"]["status"] == "FAIL"  # 0.15
    assert t["medflow run, MIRP's workload >= 5x MIRP"]["status"] == "FAIL"  # 4x
    assert t["medflow run, defaults >= 2x MIRP"]["status"] == "PASS"  # 2.5x
    assert t["orchestration <= 5% of a cold cohort run"]["status"] == "PASS"  # 4%
    assert t["<= 10 ms per task on a fully cached rerun, per cache unit"]["status"] == "FAIL"  # 25 ms per unit
    assert t["peak RSS of the cohort run <= 1.2x a 5-patient run"]["status"] == "not measured"
    assert t["workspace size after a default run <= 0.6x the DICOM input"]["status"] == "PASS"
    assert any("MIRP on 4 patients" in r["target"] for r in bench_cohort.targets(res))


def test_reference_config_is_valid_and_matches_mirp_settings(tmp_path):
    from bench.bench_features import MEDFLOW_SETTINGS
    from medflow.config import load_config
    from tasks.analysis import settings_for

    path = tmp_path / "ref.yaml"
    path.write_text(json.dumps(bench_cohort.medflow_reference_config()))
    cfg = load_config(path, source=str(tmp_path), workspace=str(tmp_path / "ws"))
    assert cfg.processing.segment_when_reference_exists is False
    assert cfg.analysis.include_auto_masks is False
    for dicom, key in bench_cohort.MODALITY_KEYS.items():
        assert settings_for(dicom, cfg.analysis) == MEDFLOW_SETTINGS[key]


def test_stage_names_drop_run_suffix_and_keys():
    assert bench_cohort.stage_name("collect-a1b") == "collect"
    assert bench_cohort.stage_name("volume-chain-R5RKE56IYMWv0") == "volume-chain"
    assert bench_cohort.stage_name("collect-study-P3JHGZKNFBR") == "collect-study"
    assert bench_cohort.stage_name("report") == "report"


def test_cohort_without_data_skips_with_reason(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bench.bench_cohort", "--data", str(tmp_path / "absent")],
                          capture_output=True, text=True, cwd=str(bench_cohort.REPO), timeout=120)
    assert proc.returncode == _common.SKIP_EXIT
    assert "SKIPPED: cohort data not found" in proc.stdout


def test_benchmarks_that_write_gibs_run_last():
    names = run.discover()
    assert set(run.RUN_LAST) <= set(names)  # the list names real modules
    assert names[-len(run.RUN_LAST):] == sorted(run.RUN_LAST)
    rest = names[:-len(run.RUN_LAST)]
    assert rest == sorted(rest) and "bench_cohort" in rest


def test_median_run_keeps_a_whole_run_and_every_value():
    runs = [{"seconds": 3.0, "files_per_s": 10.0}, {"seconds": 1.0, "files_per_s": 30.0},
            {"seconds": 2.0, "files_per_s": 15.0}]
    m = bench_cohort.median_run(runs, "seconds")
    assert (m["seconds"], m["files_per_s"]) == (2.0, 15.0)  # the median run's own figures, not mixed
    assert m["runs_of"] == 3 and m["median_of"] == 2.0 and m["all"] == [3.0, 1.0, 2.0]
    even = bench_cohort.median_run(runs[:2], "seconds")
    assert even["seconds"] == 1.0  # the lower middle of an even count: never an unmeasured mean
    # runs without the key (a flow whose wall time was not found) do not count
    assert bench_cohort.median_run([{"x": None}, {"x": 4.0}], "x")["all"] == [4.0]
    assert bench_cohort.median_run([], "x") == {}


def test_cohort_rejects_a_repeat_below_one(tmp_path):
    with pytest.raises(SystemExit, match="--repeat must be >= 1, got 0"):
        bench_cohort.main(["--repeat", "0", "--data", str(tmp_path), "--no-write"])


def test_cohort_collection_rows_warm_up_every_tool_alike_outside_the_medians(tmp_path, monkeypatch):
    # fake tools whose first call is slow (a fresh clone's compile caches, a binary's first load):
    # the warm-up round takes that call for every tool, the medians are of the timed rounds only
    data = tmp_path / "data"
    (data / "P1").mkdir(parents=True)
    (data / "P1" / "a.dcm").write_bytes(b"x" * 10)
    seconds = {"zn": iter([9.0, 1.0, 3.0, 2.0]), "zy": iter([19.0, 4.0, 6.0, 5.0]),
               "ingest": iter([29.0, 7.0, 9.0, 8.0])}

    def fake_dcm2niix(source, out, gz):
        return {"seconds": next(seconds["zy" if gz else "zn"]), "outputs": 1}

    class FakeMedflow:
        def __init__(self, workdir):
            pass

        def __call__(self, command, source, workspace, config=None):
            assert command == "ingest"
            wall = next(seconds["ingest"])
            return {"seconds": wall + 10, "flow": {"flow_wall_s": wall, "task_bodies_covered_s": wall - 1,
                                                   "orchestration_s": 1.0}, "volumes": 1}

    monkeypatch.setattr(bench_cohort, "dcm2niix", fake_dcm2niix)
    monkeypatch.setattr(bench_cohort, "Medflow", FakeMedflow)
    res = bench_cohort.main(["--data", str(data), "--only", "dcm2niix,collect", "--warmup", "1", "--repeat", "3",
                             "--workdir", str(tmp_path), "--no-write"])
    assert res["collection_warmup_s"] == {"dcm2niix -z n": [9.0], "dcm2niix -z y": [19.0],
                                          "medflow ingest (flow)": [29.0]}
    assert res["dcm2niix"]["z_n"]["all"] == [1.0, 3.0, 2.0] and res["dcm2niix"]["z_n"]["median_of"] == 2.0
    assert res["dcm2niix"]["z_y"]["median_of"] == 5.0
    assert res["collect"]["all"] == [7.0, 9.0, 8.0] and res["collect"]["median_of"] == 8.0
    with pytest.raises(SystemExit, match="--warmup must be >= 0, got -1"):
        bench_cohort.main(["--warmup", "-1", "--data", str(tmp_path), "--no-write"])
