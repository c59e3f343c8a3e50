"""Bugs are not data: tell a damaged input from a defect in medflow's own code.

Ingest quarantines *classified data defects* (the reason codes of
:data:`storage.quarantine.REASON_CODES`): pydicom or a codec failing on a file's bytes,
values that cannot be read as their VR requires, impossible geometry. An exception that
says the *program* is wrong — an ``AssertionError``, or a ``TypeError`` /
``AttributeError`` / ``NameError`` / ``KeyError`` whose innermost traceback frame is not
in one of the DICOM parsing/decoding libraries — and decode workers that cannot be
started are not properties of the input: quarantining the file would make a bug look
like bad data and let the run "succeed" with fewer volumes. Those raise
:class:`IngestBugError` instead, which fails the run.

The error message names the stage and a pseudonymous handle of the input (a file's
SHA-256 prefix, or a series' first file's prefix) and the code location of the innermost
frame; it never quotes the original exception message (a pydicom or numpy message can
quote an element value) and the original exception is not chained (``from None``), so no
header value or path reaches Prefect's logs or the command line.
"""

from __future__ import annotations

import types

__all__ = ["IngestBugError", "BUG_TYPES", "DATA_LIBRARIES", "is_bug", "raise_if_bug", "innermost_location"]

#: Exception types that indicate a programming error when raised outside the data libraries.
BUG_TYPES: tuple[type[BaseException], ...] = (AssertionError, TypeError, AttributeError, NameError, KeyError)

#: Top-level packages whose exceptions, of any type, describe the file's bytes (parsers, codecs).
DATA_LIBRARIES: frozenset[str] = frozenset({
    "pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle", "gdcm", "jpeg_ls", "pyjpegls", "PIL", "highdicom",
})


class IngestBugError(RuntimeError):
    """A defect in medflow's ingest code (or its environment), not in the input data.

    Attributes
    ----------
    stage : str
        Where it happened (``"scan"``, ``"guard"``, ``"guard decode workers"``, ``"conversion"``,
        ``"rtstruct"``, ``"seg"``).
    input_key : str
        Pseudonymous handle of the input: ``"file sha256:<12 hex>"`` or ``"series sha256:<12 hex>"``.
    exception_type : str
        The original exception's type name.
    location : str
        ``module:function:line`` of the innermost traceback frame (code, never data).
    """

    def __init__(self, stage: str, input_key: str, exception_type: str, location: str = "?"):
        self.stage = stage
        self.input_key = input_key
        self.exception_type = exception_type
        self.location = location
        super().__init__(f"ingest bug in stage '{stage}' on input {input_key}: {exception_type} raised at "
                         f"{location}; this is a defect in medflow, not in the data (nothing was quarantined "
                         f"for it)")

    def __reduce__(self):  # picklable across process boundaries with its fields
        return (type(self), (self.stage, self.input_key, self.exception_type, self.location))


def innermost_location(exc: BaseException) -> str:
    """``module:function:line`` of the innermost frame of ``exc``'s traceback (``"?"`` when none)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "?"
    frame = last.tb_frame
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}:{last.tb_lineno}"


def is_bug(exc: BaseException) -> bool:
    """True when ``exc`` is a programming error rather than a property of the input data.

    ``AssertionError``, ``TypeError``, ``AttributeError``, ``NameError`` (incl.
    ``UnboundLocalError``) and ``KeyError`` are bugs unless the innermost traceback frame
    outside the standard library belongs to a DICOM parsing/decoding library (:data:`DATA_LIBRARIES`), where such
    errors describe the file's bytes (e.g. pydicom raising ``TypeError`` on a value of
    the wrong VR). Everything else (``ValueError``, ``OverflowError``, codec
    ``RuntimeError``, ``MemoryError``, ``RecursionError``, ...) is treated as data.
    """
    if not isinstance(exc, BUG_TYPES):
        return False
    module = _innermost_caller(exc.__traceback__)
    if module is None:
        return True
    return module.split(".", 1)[0] not in DATA_LIBRARIES


def _innermost_caller(tb: types.TracebackType | None) -> str | None:
    """Module of the innermost traceback frame outside the standard library.

    A data library that hands a bad value to the standard library (pydicom looking a
    MultiValue up in an ``enum``: ``TypeError: unhashable type``) raised it as surely as if
    the frame were its own; medflow code doing the same is a medflow bug.
    """
    import sys

    found = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", "") or "")
        if module.split(".", 1)[0] not in sys.stdlib_module_names:
            found = module
        tb = tb.tb_next
    return found


def file_handle(sha256: str | None) -> str:
    """Pseudonymous handle of a file: its content digest's prefix (never its path)."""
    return f"file sha256:{(sha256 or '?')[:12]}"


def series_handle(sha256s: list[str] | tuple[str, ...]) -> str:
    """Pseudonymous handle of a series: its first file's digest prefix and file count."""
    first = sorted(s for s in sha256s if s)[:1]
    return f"series sha256:{(first[0] if first else '?')[:12]} ({len(sha256s)} files)"


def raise_if_bug(exc: BaseException, *, stage: str, input_key: str) -> None:
    """Raise :class:`IngestBugError` (without chaining ``exc``) when :func:`is_bug` says so."""
    if isinstance(exc, IngestBugError):
        raise exc
    if is_bug(exc):
        raise IngestBugError(stage, input_key, type(exc).__name__, innermost_location(exc)) from None
