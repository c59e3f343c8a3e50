"""storage.dicom.dsparse: the compiled DS parser gives float's bits or declines, never another number."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from storage.dicom.dsparse import parse_decimals
from storage.dicom.scan import iter_files


def _bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.int64)


def _float_bits(parts: list[str]) -> np.ndarray:
    return _bits([float(p) for p in parts])


def test_every_contour_of_the_shared_rtstructs_is_read_as_float_reads_it(shared_data):
    answered = declined = 0
    for path in iter_files(shared_data):
        with open(path, "rb") as fh:
            if b"1.2.840.10008.5.1.4.1.1.481.3" not in fh.read(4096):
                continue
        ds = pydicom.dcmread(path)
        for roi in getattr(ds, "ROIContourSequence", []):
            for contour in getattr(roi, "ContourSequence", []):
                elem = contour.get_item(0x30060050)
                raw = bytes(elem.value).rstrip(b" \x00") if elem is not None else b""
                if not raw:
                    continue
                got = parse_decimals(raw)
                if got is None:
                    declined += 1
                    continue
                answered += 1
                assert np.array_equal(_bits(got), _float_bits(raw.decode().split("\\"))), path.name
    assert answered > 1000 and declined <= answered // 100  # the common case is the fast one


def test_random_decimals_in_and_around_the_fast_range():
    rng = np.random.default_rng(11)
    parts: list[str] = []
    for _ in range(20000):
        n_int, n_frac = int(rng.integers(0, 12)), int(rng.integers(0, 12))
        digits = "".join(rng.choice(list("0123456789"), size=n_int + n_frac))
        text = digits[:n_int] + ("." + digits[n_int:] if n_frac or rng.random() < 0.2 else "")
        if not any(c.isdigit() for c in text):
            text += "7"
        if rng.random() < 0.4:
            text += rng.choice(["e", "E"]) + rng.choice(["", "+", "-"]) + str(int(rng.integers(0, 30)))
        parts.append(rng.choice(["", "-", "+"]) + text)
    for _ in range(5000):  # mantissas beyond 2**53 (and up to 18 digits): must decline or be exact
        parts.append(f"{int(rng.integers(2**53 - 1000, 10**18))}e{int(rng.integers(-23, 24))}")
    parts += ["9007199254740992", "9007199254740993", "9007199254740993e-5", "1e22", "1e23", "1e-22", "1e-23",
              "123456789012345678", "1234567890123456789", "0.000000000000000000001", "-0", "-0e999", "0e-999",
              "+.5", "5.", "1E5", "-1.5e+3", "00000000000000000000000001.5", "4.9406564584124654e-324"]
    for chunk in range(0, len(parts), 100):
        group = parts[chunk:chunk + 100]
        want = _float_bits(group)
        got = parse_decimals("\\".join(group).encode())
        if got is not None:
            assert np.array_equal(_bits(got), want)
        for p, w in zip(group, want, strict=True):
            one = parse_decimals(p.encode())
            assert one is None or _bits(one)[0] == w, p
    # the fast path answers where it should: the common DS forms, exact powers, signed zeros
    for text in ("-123.456789", "0.5", "5.", "+.5", "-0", "1E5", "-1.5e+3", "1e22", "1e-22", "1234567890123456e-5",
                 "9007199254740992e-3", "0e999", "00000000000000000000000001.5"):
        got = parse_decimals(text.encode())
        assert got is not None and _bits(got)[0] == _float_bits([text])[0], text
    for text in ("1e23", "1e-23", "1234567890123456789", "123456789012345678", "9007199254740993e-5"):
        assert parse_decimals(text.encode()) is None, text  # out of the exact range: the general parsers decide


@pytest.mark.parametrize("raw", [b"1 2", b" 1", b"1 ", b"1\\\\2", b"1\\", b"\\", b"", b".", b"-", b"+", b"1e",
                                 b"1e+", b"e5", b"inf", b"nan", b"0x10", b"1_0", b"1.5abc", b"1\x00", b"1,5", b"--1",
                                 b"1.2.3", b"1e5.5"])
def test_anything_else_declines(raw):
    assert parse_decimals(raw) is None


def test_the_rtstruct_reader_still_gives_floats_bits_through_its_general_parsers():
    from storage.dicom.rtstruct import _decimals

    parts = ["1e23", " 7 ", "1.5", "9007199254740993e-5", "-0"]  # declined by the fast path, read by the others
    got = _decimals("\\".join(parts).encode())
    assert got is not None and np.array_equal(_bits(got), _float_bits(parts))
    with pytest.raises(TypeError, match="raw must be bytes"):
        parse_decimals("1.5")  # type: ignore[arg-type]
