"""storage.zarr_plain writes, byte for byte, the files zarr writes for the arrays the pipeline stores."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import zarr

from storage import volumes
from storage.volumes import open_array, read_numpy, write_array


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cases():
    rng = np.random.default_rng(3)
    ct = rng.normal(0, 300, (37, 21, 19)).astype(np.int16)
    ct[:9] = 0  # whole chunks of zeros: no file
    mask = np.zeros((37, 21, 19), bool)
    mask[20:25, 5:9, 3:7] = True
    pet = rng.gamma(2.0, 1.5, (23, 16, 16)).astype(np.float32)
    pet[:4] = -0.0  # -0.0 is not the fill value bit for bit: zarr writes these chunks
    pet[5, 0, 0] = np.nan
    mr = rng.integers(0, 4000, (11, 13, 17), dtype=np.uint16)
    return {
        "int16 partial edge chunks": (ct, 0.005),
        "bool mask": (mask, 0.002),
        "float32 with -0 and nan": (pet, 0.004),
        "uint16 one chunk": (mr, 32.0),
        "uint8 2-D": (rng.integers(0, 255, (9, 14), dtype=np.uint8), 32.0),
        "float64 4-D": (rng.normal(size=(2, 5, 6, 7)), 0.001),
        "int32 single plane chunks": (rng.integers(-5, 5, (6, 8, 9), dtype=np.int32), 0.0002),
        "all zero": (np.zeros((4, 5, 6), np.int16), 32.0),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_plain_writer_equals_zarr(case, tmp_path, monkeypatch):
    array, chunk_mb = _cases()[case]
    attrs = {"medflow": {"volume_key": "v.0", "note": "Ünïcode – text", "n": 3, "x": [1.5, -0.0]},
             "dicom": {"modality": "CT"}}
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    write_array(tmp_path / "plain", array, affine=affine, spacing=(2.5, 0.7, 0.7)[-min(3, array.ndim):],
                attrs=attrs, chunk_mb=chunk_mb)
    monkeypatch.setattr(volumes, "plain_layout", lambda *a, **k: False)  # zarr's own writer
    write_array(tmp_path / "zarr", array, affine=affine, spacing=(2.5, 0.7, 0.7)[-min(3, array.ndim):],
                attrs=attrs, chunk_mb=chunk_mb)
    plain, ref = _files(tmp_path / "plain"), _files(tmp_path / "zarr")
    assert sorted(plain) == sorted(ref)
    for name in ref:
        assert plain[name] == ref[name], name
    got, _ = read_numpy(tmp_path / "plain")
    assert got.dtype == array.dtype and np.array_equal(got, array, equal_nan=array.dtype.kind == "f")
    assert np.array_equal(open_array(tmp_path / "plain").values, array, equal_nan=array.dtype.kind == "f")


def test_layouts_zarr_keeps():
    from zarr.codecs import BloscCodec

    from storage.zarr_plain import plain_layout

    codec = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")
    assert plain_layout(np.int16, shards=None, fill=0, codec=codec, attributes={"a": 1.0})
    assert not plain_layout(np.int16, shards=(8, 8, 8), fill=0, codec=codec, attributes={})
    assert not plain_layout(np.int16, shards=None, fill=7, codec=codec, attributes={})
    assert not plain_layout(np.dtype(">i2"), shards=None, fill=0, codec=codec, attributes={})
    assert not plain_layout(np.float32, shards=None, fill=0, codec=codec, attributes={"a": float("nan")})
    assert not plain_layout(np.int16, shards=None, fill=0, codec=zarr.codecs.ZstdCodec(), attributes={})
