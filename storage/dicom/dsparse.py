"""Backslash-separated decimal strings (DS values, PS3.5 6.2) read exactly as ``float`` reads them, compiled.

An RT Structure Set's ContourData holds millions of DS values (the 26 RTSTRUCTs of the sts
cohort: 3.5 million, 26 MB of text). Each part of the form ``[+-]digits[.digits][(e|E)[+-]digits]``
(at least one digit before the exponent) whose significant digits fit in 18 decimal digits, with a
mantissa ``m <= 2**53`` and a decimal exponent ``q`` with ``|q| <= 22``, is ``m * 10**q`` (or
``m / 10**-q``) computed with one IEEE-754 multiplication or division of two exactly represented
doubles: correctly rounded, hence the bits ``float`` gives (Clinger's fast path, W. D. Clinger,
*How to read floating point numbers accurately*, PLDI 1990; the first step of ``fast_float``).
A zero mantissa is a signed zero whatever the exponent. Any other part (spaces, an empty part,
``inf``/``nan``, more digits, a larger exponent) makes the whole string ``None``: the caller's
general parsers decide, as before.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["parse_decimals"]

#: 10**0 .. 10**22: every one an exact double (5**22 < 2**53).
_POW10 = np.array([float(10 ** i) for i in range(23)], dtype=np.float64)
_MAX_SIGNIFICANT = 18  # below 10**18 the mantissa never overflows an int64
_MAX_MANTISSA = 1 << 53


@numba.njit(nogil=True, cache=True)
def _parse(buf: np.ndarray, out: np.ndarray, pow10: np.ndarray) -> int:  # pragma: no cover - compiled
    n = buf.shape[0]
    i = 0
    k = 0
    while True:
        neg = False
        if i < n and (buf[i] == 45 or buf[i] == 43):  # '-' '+'
            neg = buf[i] == 45
            i += 1
        m = 0
        significant = 0
        digits = 0
        scale = 0
        point = False
        while i < n:  # digits, with at most one '.' among them
            c = buf[i]
            if 48 <= c <= 57:
                d = c - 48
                if m != 0 or d != 0:  # (leading zeros carry no significance)
                    if significant >= _MAX_SIGNIFICANT:
                        return -1
                    m = m * 10 + d
                    significant += 1
                if point:
                    scale -= 1
                digits += 1
            elif c == 46 and not point:  # '.'
                point = True
            else:
                break
            i += 1
        if digits == 0:
            return -1
        e = 0
        if i < n and (buf[i] == 101 or buf[i] == 69):  # 'e' 'E'
            i += 1
            e_neg = False
            if i < n and (buf[i] == 45 or buf[i] == 43):
                e_neg = buf[i] == 45
                i += 1
            e_digits = 0
            while i < n and 48 <= buf[i] <= 57:
                if e < 100000:
                    e = e * 10 + (buf[i] - 48)
                e_digits += 1
                i += 1
            if e_digits == 0:
                return -1
            if e_neg:
                e = -e
        if i < n and buf[i] != 92:  # anything but '\' after the number
            return -1
        if m == 0:
            v = 0.0
        else:
            q = e + scale
            if m > _MAX_MANTISSA or q < -22 or q > 22:
                return -1
            v = float(m) * pow10[q] if q >= 0 else float(m) / pow10[-q]
        out[k] = -v if neg else v
        k += 1
        if i >= n:
            return k
        i += 1  # past the '\'
        if i >= n:
            return -1  # a trailing '\': an empty last part


def parse_decimals(raw: bytes) -> np.ndarray | None:
    """The float64 values of every backslash-separated part of ``raw``, or None (see the module docstring).

    Parameters
    ----------
    raw : bytes
        ASCII text, e.g. a ContourData value without its padding.

    Returns
    -------
    ndarray of float64, shape ``(raw.count(b"\\\\") + 1,)``, or None
        Bit for bit ``[float(p) for p in raw.split(b"\\\\")]`` when every part is in the fast grammar.
    """
    if not isinstance(raw, bytes | bytearray):
        raise TypeError(f"raw must be bytes, got {type(raw).__name__}")
    out = np.empty(raw.count(b"\\") + 1, dtype=np.float64)
    got = _parse(np.frombuffer(raw, dtype=np.uint8), out, _POW10)
    return out if got == out.shape[0] else None


def warm_up() -> None:
    """Compile (or load from numba's cache) the parser: once per process."""
    parse_decimals(b"1.5\\-2")
