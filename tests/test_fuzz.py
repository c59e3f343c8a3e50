"""CI-sized seeded fuzzing of the pipeline's collection (``scripts/fuzz.py``; the full run is 1,000 mutations).

80 seeded mutations of real cohort files (every mutation kind) in donor series, beside the untouched
STS_008 CT series and its RTSTRUCT, ingested as one batch by :func:`storage.collect.collect_into`
in a child process. Pass: the run completes, the valid series and mask are identical to a clean
run, every slice of every other volume equals the pydicom decode of a batch file at that
position, every damaged file is converted that way or quarantined with a documented reason, no
exception is disguised as a data defect, per-file inspection <= 25 s, process-tree RSS <= 2.5 GiB,
inputs byte-identical.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import sys

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("medflow_fuzz_script", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fuzz(shared_data):
    return _fuzz_module()


def test_mutators_are_seeded_and_structural(fuzz, shared_data):
    f = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT" / "image").glob("*.dcm"))[0]
    data = f.read_bytes()
    els = fuzz.elements(data)
    assert els[-1].tag == 0x7FE00010 and els[-1].end == len(data)  # the walker reaches the pixel data end
    for kind in fuzz.KINDS:
        if kind in ("duplicate", "conflict", "deflate_bomb"):
            continue
        a = fuzz.mutate(kind, data, random.Random(5))
        b = fuzz.mutate(kind, data, random.Random(5))
        assert a == b, kind  # same seed, same bytes
        if kind != "reencode_valid":
            assert a[0] != data, kind


def test_fuzz_batch_seed_set(fuzz, tmp_path, capsys):
    summary = fuzz.run_fuzz(n=80, seed=20261203, out=tmp_path, full=False, per_series=40)
    with capsys.disabled():
        print(f"\nfuzz (80 mutations, seed 20261203): crashes {summary['crashes']}, hangs {summary['hangs']}, "
              f"wrong {len(summary['wrong_conversions'])}, lost {len(summary['lost_files'])}, "
              f"quarantined by reason {summary.get('quarantined_by_reason')}, "
              f"outcome by kind {summary.get('outcome_by_kind')}, peak RSS {summary['peak_rss_gib']} GiB, "
              f"max inspect {summary['max_file_inspect_seconds']} s")
    assert summary["crashes"] == 0, summary.get("crash_stderr_tail")
    assert summary["hangs"] == 0
    assert summary["wrong_conversions"] == []
    assert summary["lost_files"] == []
    assert summary["bug_like_quarantine"] == [] and summary["undocumented_reasons"] == []
    assert summary["valid_series_mismatch"] == []
    assert summary["inputs_unchanged"]
    assert summary["slow_files"] == [] and summary["peak_rss_gib"] <= 2.5
    assert set(summary["kinds"]) == set(fuzz.KINDS)  # every kind of damage is in the seed set
    # the oracle is not vacuous: damaged series were converted (and checked slice by slice) and
    # damaged files were quarantined
    assert summary["damaged_series_files_converted"] > 20
    assert sum(summary["quarantined_by_reason"].values()) >= 20
    assert summary["ok"]


# --------------------------------------------------------------------------- regressions found by fuzzing


@pytest.mark.parametrize("keyword", ["Modality", "PixelSpacing", "ImageType"])
def test_regression_top_level_wrong_vr(fuzz, shared_data, tmp_path, keyword):
    """Found by ``scripts/fuzz.py --n 300 --seed 2``: a top-level element whose VR was replaced by FD
    (Modality) made pydicom raise inside the collection policy and the whole batch crashed; on
    PixelSpacing/ImageType one such slice made its whole series ``series_split_failed``. Now the file
    is rejected at read time (every top-level value must decode under its VR) and the rest converts."""
    from pydicom.datadict import tag_for_keyword

    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys

    files = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT" / "image").glob("*.dcm"))
    src = tmp_path / "src"
    src.mkdir()
    for f in files[:-1]:
        (src / f.name).write_bytes(f.read_bytes())
    data = fuzz.explicit_le(files[-1].read_bytes())
    el = next(e for e in fuzz.elements(data) if e.tag == tag_for_keyword(keyword))
    (src / files[-1].name).write_bytes(data[:el.start + 4] + b"FD" + data[el.start + 6:])  # the last slice: no gap
    summary = collect_into(src, tmp_path / "out", config=fuzz.collection_config(), keys=PseudonymKeys("r" * 32),
                           workspace=tmp_path / "ws", run_id="regression")
    assert [v.meta["shape"][0] for v in summary.volumes] == [len(files) - 1]
    assert [r["reason"] for r in summary.rejections] == ["unreadable_header"]


def test_regression_patient_of_never_raises(fuzz, shared_data):
    """Found by ``scripts/fuzz.py --n 300 --seed 2`` (and the CI seed set): a file cut inside the File
    Meta group length (at byte 140) made ``storage.dicom.units.patient_of`` raise ``struct.error`` and
    the whole collection crashed. Every prefix and 300 seeded mutations of a real file must give a
    PatientID or None."""
    from storage.dicom.units import patient_of

    data = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT" / "image").glob("*.dcm"))[0].read_bytes()
    body = fuzz.body_offset(data)
    for n in [*range(0, body + 64), len(data) // 2, len(data) - 1]:
        assert patient_of(data[:n]) in (None, "", "STS_003"), n
    rng = random.Random(2)
    kinds = [k for k in fuzz.KINDS if k not in ("duplicate", "conflict", "deflate_bomb")]
    for _ in range(300):
        mutated, _what = fuzz.mutate(rng.choice(kinds), data, rng)
        assert patient_of(mutated) is None or isinstance(patient_of(mutated), str)
