"""Incremental cohort collection: adding a patient to a source converts only that patient's series.

The source is split into units (one per patient), each a content-keyed artifact folder
(``artifacts/collection-unit/<key>``); a unit whose files, parameters, code and key did not
change is a cache hit. Real data: three patients of ``../shared/data/sts_cohort``.
"""

import json
import shutil
import time

import pytest

from medflow.config import CollectionConfig
from storage.collect import UNIT_STAGE, collect_into
from storage.pseudonym import PseudonymKeys
from tasks.collection import unit_salt

KEYS = PseudonymKeys("incremental-secret-0123456789abc")
PATIENTS = ("STS_025", "STS_008", "STS_026")  # the three smallest (122-150 files)


@pytest.fixture()
def cohort(shared_data):
    root = shared_data / "sts_cohort" / "dicom"
    if not root.is_dir():
        pytest.skip("sts_cohort not available")
    return root


def _units(ws):
    return sorted(p.name for p in (ws / "artifacts" / UNIT_STAGE).glob("*/*") if p.is_dir()
                  and not p.name.startswith(".staging"))


def _collect(src, ws, tmp_path, name, **kw):
    salt = unit_salt(CollectionConfig(), KEYS.key_id())
    return collect_into(src, tmp_path / name, config=CollectionConfig(), keys=KEYS, workspace=ws, unit_salt=salt, **kw)


def test_adding_a_patient_converts_only_that_patient(cohort, tmp_path):
    src, ws = tmp_path / "src", tmp_path / "ws"
    ws.mkdir()
    for p in PATIENTS[:2]:
        shutil.copytree(cohort / p, src / p)
    first = _collect(src, ws, tmp_path, "s1")
    assert (first.units_converted, first.units_cached) == (2, 0)
    units_before = _units(ws)
    assert len(units_before) == 2
    assert {v.meta["modality"] for v in first.volumes} == {"CT", "PT", "MR"}
    assert len(first.volumes) == 6 and len(first.masks) == 6

    # a third patient, deeper in the tree and under other names: only its unit is converted
    shutil.copytree(cohort / PATIENTS[2], src / "more" / "x")
    t0 = time.perf_counter()
    second = _collect(src, ws, tmp_path, "s2")
    elapsed = time.perf_counter() - t0
    assert (second.units_converted, second.units_cached) == (1, 2)
    units_after = _units(ws)
    assert len(units_after) == 3 and set(units_before) < set(units_after)
    new_unit = (set(units_after) - set(units_before)).pop()
    new_patient = {v.meta["patient_key"] for v in second.volumes if v.base is not None and v.base.name == new_unit}
    assert len(new_patient) == 1 and new_patient.isdisjoint({v.meta["patient_key"] for v in first.volumes})
    assert len(second.volumes) == 9 and len(second.masks) == 9
    # the first two patients' volumes and masks are the very same artifacts (same folder, same keys)
    before = {(v.meta["volume_key"], str(v.base), v.rel) for v in first.volumes}
    assert before <= {(v.meta["volume_key"], str(v.base), v.rel) for v in second.volumes}
    assert {m.meta["mask_key"] for m in first.masks} <= {m.meta["mask_key"] for m in second.masks}
    # a unit's record says what it holds (PHI-free keys only)
    record = json.loads((next((ws / "artifacts" / UNIT_STAGE).glob(f"*/{new_unit}")) / "unit.json").read_text())
    assert len(record["volumes"]) == 3 and "STS_" not in json.dumps(record)

    # nothing changed: every unit is a cache hit, and moving the source changes nothing
    moved = tmp_path / "moved"
    shutil.move(src, moved)
    third = _collect(moved, ws, tmp_path, "s3")
    assert (third.units_converted, third.units_cached) == (0, 3)
    assert [(v.meta, str(v.base), v.rel) for v in third.volumes] == [(v.meta, str(v.base), v.rel)
                                                                     for v in second.volumes]
    assert _units(ws) == units_after
    print(f"adding one patient to two: {elapsed:.1f} s")
