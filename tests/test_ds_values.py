"""A raw DS value is judged in one regular-expression match exactly as part by part (storage.dicom.series)."""

from __future__ import annotations

import random

import pytest

from storage.dicom.series import _ds_raw_ok, _ds_text_ok


def _part_by_part(raw: bytes) -> bool:
    return all(_ds_text_ok(t) for t in raw.decode("latin-1").split("\\"))


def test_one_match_equals_part_by_part_on_random_values():
    rnd = random.Random(20261203)
    alphabet = b"0123456789.eE+- \x00\\aZ,"
    for _ in range(100_000):
        raw = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        assert _ds_raw_ok(raw) == _part_by_part(raw), raw


@pytest.mark.parametrize("raw", [
    b"", b" ", b"\\", b"1.5", b" -0.25 \\+3", b"1.5\x00", b"\x00 7 \x00", b".5\\5.", b"1e3", b"1E-3\\2e+2",
    b"1e999", b"-1e309\\0", b"9" * 299, b"9" * 400, b"-" + b"9" * 320, b"1.7976931348623157e308",
    b"1 2", b"nan", b"inf", b"1,5", b"e5", b"+", b"-.", b"1.2.3", b"0x10", b"\\\\1\\",
])
def test_edge_values(raw):
    assert _ds_raw_ok(raw) == _part_by_part(raw)
