"""The compiled RTSTRUCT polygon fill and the ContourData parsers give exactly what skimage and float give."""

import numpy as np
import pytest
from pydicom.dataset import Dataset
from skimage.draw import polygon

from storage.dicom.rtstruct import contour_points, fill_polygon


def _reference(r, c, shape):
    ref = np.zeros(shape, bool)
    rr, cc = polygon(r, c, shape=shape)
    ref[rr, cc] = True
    return ref


@pytest.mark.parametrize("mode", range(6))
def test_fill_polygon_matches_skimage_pixel_for_pixel(mode):
    rng = np.random.default_rng(100 + mode)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        shape = (int(rng.integers(5, 50)), int(rng.integers(5, 50)))
        if mode == 0:  # arbitrary real vertices, partly outside the image
            r, c = rng.uniform(-5, shape[0] + 5, n), rng.uniform(-5, shape[1] + 5, n)
        elif mode == 1:  # vertices on pixel centres (vertex and edge cases)
            r, c = rng.integers(-3, shape[0] + 3, n).astype(float), rng.integers(-3, shape[1] + 3, n).astype(float)
        elif mode == 2:  # half-pixel vertices (horizontal/vertical edges through centres)
            r, c = rng.integers(-3, 2 * shape[0] + 3, n) / 2.0, rng.integers(-3, 2 * shape[1] + 3, n) / 2.0
        elif mode == 3:  # within rounding distance of pixel centres (the 1e-12 vertex tolerance)
            jitter = [-1e-13, 0.0, 1e-13, 1e-10]
            r = rng.integers(-3, shape[0] + 3, n) + rng.choice(jitter, n)
            c = rng.integers(-3, shape[1] + 3, n) + rng.choice(jitter, n)
        elif mode == 5:  # long edges over many rows, vertices far outside the image (few candidate rows kept)
            r = rng.choice([-1e6, -40.5, 0.0, shape[0] / 3, shape[0] - 1.0, 1e6 + 0.5], n) + rng.uniform(-1, 1, n)
            c = rng.uniform(-2 * shape[1], 3 * shape[1], n)
        else:  # smooth closed contours like real delineations
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(2, 20)
            r, c = shape[0] / 2 + rad * np.sin(a), shape[1] / 2 + rad * np.cos(a)
        assert np.array_equal(fill_polygon(r, c, shape), _reference(r, c, shape)), (r, c, shape)


def test_fill_polygon_dense_contour_is_fast_and_equal():
    a = np.linspace(0, 2 * np.pi, 800, endpoint=False)
    r, c = 100 + 60 * np.sin(a) + 3 * np.sin(17 * a), 120 + 70 * np.cos(a)
    assert np.array_equal(fill_polygon(r, c, (256, 256)), _reference(r, c, (256, 256)))
    assert fill_polygon(r, c, (256, 256)).sum() > 10000


def test_contour_points_from_raw_bytes_equals_pydicom_conversion(tmp_path):
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    values = ["1.5", "-2.25", "3e2", " 4 ", "+5.0", "6.000001"]
    ds = Dataset()
    item = Dataset()
    item.ContourData = values
    ds.ROIContourSequence = [Dataset()]
    ds.ROIContourSequence[0].ContourSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "rt.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    read = dcmread(path, force=True)
    raw_item = read.ROIContourSequence[0].ContourSequence[0]
    got = contour_points(raw_item)  # from the raw element bytes
    expected = np.asarray([float(v) for v in raw_item.ContourData], dtype=np.float64).reshape(-1, 3)
    assert got.dtype == np.float64 and got.shape == (2, 3)
    assert np.array_equal(got, expected)
    assert np.array_equal(contour_points(raw_item), expected)  # now converted by pydicom: same values


def test_contour_points_rejects_a_count_that_is_not_a_multiple_of_three():
    item = Dataset()
    item.ContourData = ["1", "2", "3", "4"]
    with pytest.raises(ValueError):
        contour_points(item)


def test_decimal_parser_gives_the_bits_float_gives_and_refuses_what_float_refuses():
    from storage.dicom.rtstruct import _decimals

    rng = np.random.default_rng(5)
    parts = [f"{rng.normal(0, 300):.{int(rng.integers(0, 17))}f}" for _ in range(2000)]
    parts += [f"{int(rng.integers(0, 10**15))}e{int(rng.integers(-320, 309))}" for _ in range(2000)]
    parts += ["2.2250738585072011e-308", "4.9406564584124654e-324", "1.7976931348623157e308", "1e400",
              "9007199254740993", "-0", "+.5", "5.", " 7 ", "0.1"]
    got = _decimals("\\".join(parts).encode())
    expected = np.array([float(p) for p in parts])
    assert got is not None and np.array_equal(got.view(np.int64), expected.view(np.int64))
    for bad in (b"1 2", b"1\\\\2", b"1\\", b"\\", b"1e", b"-", b"1,5\\2", b"0x10", b"1.5abc\\2", b"1\x00\\2"):
        with pytest.raises(ValueError):
            [float(p) for p in bad.decode().split("\\")]
        assert _decimals(bad) is None, bad


def test_arrow_decimal_path_gives_the_bits_float_gives():
    """The fast path (Arrow's fast_float cast) is correctly rounded: float's bits, halfway cases included;
    what it refuses (spaces, underscores, empty parts) goes to numpy's parser, which still matches float."""
    from decimal import Decimal, getcontext

    from storage.dicom.rtstruct import _decimals, _decimals_arrow

    rng = np.random.default_rng(7)
    parts = [f"{rng.normal(0, 300):.{int(rng.integers(0, 17))}f}" for _ in range(3000)]
    parts += [f"{int(rng.integers(0, 10**15))}e{int(rng.integers(-330, 310))}" for _ in range(3000)]
    parts += ["".join(rng.choice(list("0123456789"), size=int(n))) + "." + "".join(rng.choice(list("0123456789"),
              size=25 - int(n))) for n in rng.integers(1, 24, size=2000)]  # 25 significant digits
    getcontext().prec = 60
    for x in rng.uniform(-1e4, 1e4, size=2000):  # exact midpoints between neighbouring doubles: round to even
        parts.append(format((Decimal(float(x)) + Decimal(float(np.nextafter(x, np.inf)))) / 2, "f"))
    parts += ["2.2250738585072011e-308", "4.9406564584124654e-324", "1.7976931348623157e308", "1e400",
              "9007199254740993", "-0", "+.5", "5.", "0.1", "1E5", "-1.5e+3"]
    raw = "\\".join(parts).encode()
    expected = np.array([float(p) for p in parts])
    fast = _decimals_arrow(raw)
    assert fast is not None and fast.flags.writeable
    assert np.array_equal(fast.view(np.int64), expected.view(np.int64))
    for refused in (b"1\\ 2", b"1_0\\2", b"1\\\\2", b"1\\", b"1e\\2", b"0x10"):
        assert _decimals_arrow(refused) is None, refused
    assert np.array_equal(_decimals(b"1\\ 2 \\3"), [1.0, 2.0, 3.0])  # spaces: numpy's parser, as float reads them
