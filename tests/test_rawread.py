"""The one-pass reader (:mod:`storage.dicom.rawread`) and the native pixel path, with pydicom as the oracle.

- ``dataset_from_bytes`` gives the data set ``pydicom.dcmread`` gives (every tag, VR, value,
  nested sequence, file meta, preamble, encoding) on real files of every vendor/form here and on
  seeded damaged mutations of them; where it declines (None) the caller uses ``dcmread``.
- ``unconvertible_elements`` raises exactly when converting every top-level value raises.
- ``pixels._native_frames`` equals pydicom's ``pixel_array`` path through ``decode_frames``,
  verdicts (reason codes) included.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import pathlib
import random
import sys
import warnings

import numpy as np
import pydicom

from storage.dicom import pixels
from storage.dicom.guard.common import _silenced
from storage.dicom.rawread import dataset_from_bytes, unconvertible_elements

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _canon(ds) -> list:
    out = []
    for el in ds:  # converts every value, nested data sets included
        if el.VR == "SQ":
            out.append((int(el.tag), el.VR, el.is_undefined_length, [_canon(i) for i in el.value]))
        else:
            out.append((int(el.tag), el.VR, el.is_undefined_length, repr(el.value)))
    return out


def _described(ds) -> tuple:
    try:
        with _silenced():
            return (_canon(ds.file_meta), _canon(ds), ds.preamble, ds.is_implicit_VR, ds.is_little_endian,
                    ds.original_encoding, str(ds.original_character_set))
    except Exception as exc:  # noqa: BLE001 - the same failure on both sides is agreement
        return ("raises", type(exc).__name__)


def _raises(fn) -> str | None:
    try:
        with _silenced():
            fn()
        return None
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


def _real_files(shared: pathlib.Path) -> list[pathlib.Path]:
    sts = shared / "sts_cohort" / "dicom"
    files = [p for d in sorted(sts.iterdir())[:2] for p in sorted(d.rglob("*.dcm"))]
    for name in ("siemens_xa30i_t1w_classic", "nih_ge_siemens_epi_4d", "ibsi_sts_ct_pet_mr_rtstruct"):
        files += sorted(p for p in (shared / name).rglob("*") if p.is_file())
    return files


def _fuzz():
    spec = importlib.util.spec_from_file_location("medflow_fuzz_script_rawread", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _mutations(shared: pathlib.Path, n: int = 240) -> list[bytes]:
    fuzz = _fuzz()
    sts = shared / "sts_cohort" / "dicom"
    donors = [sorted((sts / p / m / "image").glob("*.dcm"))[k]
              for p, m, k in (("STS_003", "CT", 10), ("STS_003", "PET", 3), ("STS_003", "MR_T1", 5),
                              ("STS_008", "CT", 0), ("STS_008", "MR_T1", 7))]
    kinds = [k for k in fuzz.KINDS if k not in ("duplicate", "conflict", "deflate_bomb")]
    rng = random.Random(20261203)
    out = []
    for i in range(n):
        data = donors[i % len(donors)].read_bytes()
        out.append(fuzz.mutate(kinds[i % len(kinds)], data, rng)[0])
    return out


def test_real_files_parse_as_dcmread(shared_data):
    files = _real_files(shared_data)
    fast = 0
    for p in files:
        data = p.read_bytes()
        try:
            with _silenced():
                ref = pydicom.dcmread(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - not DICOM (a manifest, a NIfTI reference)
            continue
        ds = dataset_from_bytes(data)
        assert ds is not None, p.name  # every real file here is in the common layout
        fast += 1
        assert _described(ds) == _described(ref), p
        assert _raises(lambda ds=ds: unconvertible_elements(ds, sequences_checked=False)) is None
    assert fast > 700


def test_mutations_parse_and_check_as_pydicom(shared_data):
    warnings.simplefilter("ignore")
    declined = compared = checks_raising = 0
    for data in _mutations(shared_data):
        try:
            with _silenced():
                ref = pydicom.dcmread(io.BytesIO(data))
        except Exception:  # noqa: BLE001
            ref = None
        with _silenced():
            ds = dataset_from_bytes(data)
        if ds is None:
            declined += 1
            continue
        assert ref is not None, "the fast reader accepted bytes pydicom refuses"
        full = _raises(lambda ref=ref: [None for _ in copy.deepcopy(ref)])
        cheap = _raises(lambda ds=ds: unconvertible_elements(ds, sequences_checked=False))
        assert (full is None) == (cheap is None), (full, cheap)
        checks_raising += cheap is not None
        assert _described(dataset_from_bytes(data)) == _described(ref)
        compared += 1
    assert compared > 80 and declined > 5 and checks_raising > 0, (compared, declined, checks_raising)


def _decode(ds, *, native: bool):
    saved = pixels._native_frames
    if not native:
        pixels._native_frames = lambda ds: None
    try:
        with _silenced():
            return pixels.decode_frames(ds), None
    except pixels.PixelDataError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001
        return None, type(exc).__name__
    finally:
        pixels._native_frames = saved


def test_native_pixels_equal_pydicom(shared_data):
    datas = [p.read_bytes() for p in _real_files(shared_data)[::7]] + _mutations(shared_data, 160)
    used = 0
    for data in datas:
        try:
            with _silenced():
                ds = pydicom.dcmread(io.BytesIO(data))
                if "PixelData" not in ds or pixels._native_frames(copy.deepcopy(ds)) is None:
                    continue
        except Exception:  # noqa: BLE001 - a file the ingest rejects before decoding
            continue
        used += 1
        a, ra = _decode(copy.deepcopy(ds), native=False)
        b, rb = _decode(copy.deepcopy(ds), native=True)
        assert ra == rb
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            assert b.flags.writeable
    assert used > 100
