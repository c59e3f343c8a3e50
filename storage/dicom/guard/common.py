"""Guard reason codes, limits, constants and the quiet-reading context (shared by the guard modules)."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

REASON_CODES: dict[str, str] = {
    "not_dicom": "not a DICOM file: no DICM magic and no parseable DICOM data set (includes zero-byte files)",
    "bad_preamble": "the 128-byte preamble / 'DICM' magic is damaged or misplaced (PS3.10 7.1) "
                    "although DICOM data follows",
    "unreadable_file": "the file could not be opened or read (permissions, I/O error)",
    "file_too_large": "the file is larger than the configured maximum file size",
    "truncated": "the file ends before a declared element, item or pixel data ends "
                 "(cut file, element length past end of file)",
    "malformed_structure": "element lengths or delimiters are inconsistent with the enclosing "
                           "sequence/item/fragment structure (PS3.5 7.5, A.4)",
    "transfer_syntax_mismatch": "the data set does not parse under its declared transfer syntax but "
                                "does under another (e.g. big-endian header over a little-endian body)",
    "pixel_length_mismatch": "the pixel data length disagrees with Rows x Columns x Samples x Frames x "
                             "BitsAllocated/8, or an encapsulated stream has fewer fragments than frames",
    "absurd_dimensions": "Rows/Columns/NumberOfFrames/BitsAllocated/SamplesPerPixel outside sane ranges, "
                         "or the expected pixel bytes exceed the configured maximum",
    "decompression_bomb": "decompressed size (deflate stream, or compressed pixel data's declared size) "
                          "exceeds the configured cap",
    "nesting_too_deep": "sequences nested deeper than the configured limit (pydicom would recurse)",
    "decode_failed": "pixel data of a compressed frame could not be decoded, or decoded to another "
                     "shape than the header declares, or the bounded worker died",
    "timeout": "decoding a sample of the pixel data took longer than the per-file time limit",
    "memory_limit": "decoding a sample of the pixel data exceeded the per-file memory limit",
    "duplicate_instance_conflict": "several files share one SOP Instance UID but their pixel data differ "
                                   "(all copies rejected: no way to tell which is right)",
    "series_patient_conflict": "part of a series whose instances disagree on the patient (PatientID); the "
                               "part with the most files kept the series (converted unless QC rejected it), "
                               "the smaller part was not converted",
    "duplicate_instance": "an identical duplicate of another file's instance (same SOP Instance UID and "
                          "pixel data); one copy was kept",
    "unsupported_transfer_syntax": "no available decoder for the transfer syntax (unknown, private, "
                                   "video, or a missing plugin)",
    "burned_in_annotation": "the image declares or is suspected of burned-in annotation "
                            "(set by storage.deid, not by the guard)",
    "missing_required_attribute": "a required attribute is missing (SOP Class/Instance UID, Image Pixel "
                                  "module attributes, or the pixel data of an image object)",
    "invalid_attribute": "a required attribute is present but its value cannot be read as its VR "
                         "requires (wrong length or multiplicity, not a number)",
    "dicomdir": "a DICOMDIR media directory (an index of other files, no image data)",
}

# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class GuardLimits:
    """Hard limits applied to every untrusted file (the lead's config holds the defaults).

    Attributes
    ----------
    max_file_bytes : int
        Larger files are rejected (``file_too_large``) without being parsed.
    max_pixel_bytes : int
        Maximum expected (decoded) pixel bytes of one file.
    max_inflated_bytes : int
        Maximum inflated size of a Deflated Explicit VR Little Endian data set.
    max_rows, max_columns : int
        Maximum Rows / Columns.
    max_frames : int
        Maximum Number of Frames.
    max_sequence_depth : int
        Maximum sequence nesting depth (a top-level sequence has depth 1).
    decode_timeout_s : float
        Wall-clock limit for decoding the sample frames of one compressed file.
    worker_memory_bytes : int
        Address space a bounded worker may grow by above its idle baseline.
    decode_sample_frames : int
        Frames of a compressed file decoded in the worker: 0 = none, 1 = first,
        2 = first and last.
    in_memory_bytes : int
        Files up to this size are read into memory once (hash + parse from memory);
        larger ones are parsed from the open file.
    """

    max_file_bytes: int = 4 << 30
    max_pixel_bytes: int = 2 << 30
    max_inflated_bytes: int = 512 << 20
    max_rows: int = 32768
    max_columns: int = 32768
    max_frames: int = 100_000
    max_sequence_depth: int = 32
    decode_timeout_s: float = 60.0
    worker_memory_bytes: int = 2 << 30
    decode_sample_frames: int = 2
    in_memory_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixel_bytes", "max_inflated_bytes", "max_rows", "max_columns",
                     "max_frames", "max_sequence_depth", "worker_memory_bytes", "in_memory_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (self.decode_timeout_s > 0):
            raise ValueError(f"decode_timeout_s must be > 0, got {self.decode_timeout_s!r}")
        if self.decode_sample_frames not in (0, 1, 2):
            raise ValueError(f"decode_sample_frames must be 0, 1 or 2, got {self.decode_sample_frames!r}")


# --------------------------------------------------------------------------- constants

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_DEFLATED_LE = "1.2.840.10008.1.2.1.99"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_NATIVE = {_IMPLICIT_LE: (True, True), _EXPLICIT_LE: (False, True), _EXPLICIT_BE: (False, False),
           _DEFLATED_LE: (False, True)}
_ENCODINGS = [(True, True), (False, True), (False, False)]  # (implicit, little endian)
_ENCODING_NAMES = {(True, True): "Implicit VR Little Endian", (False, True): "Explicit VR Little Endian",
                   (False, False): "Explicit VR Big Endian"}
_SPP_OK = (1, 3)
_BITS_ALLOCATED_OK = (1, 8, 16, 32, 64)
_READ_BLOCK = 1 << 20

# the few top-level values the guard decodes (attributes.py) and the walk records (structure.py)
_KEYWORDS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00280002: "SamplesPerPixel",
             0x00280004: "PhotometricInterpretation", 0x00280008: "NumberOfFrames", 0x00280010: "Rows",
             0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280101: "BitsStored", 0x00280102: "HighBit",
             0x00280103: "PixelRepresentation"}
_WANTED = frozenset(_KEYWORDS)
#: VRs whose value is text (any ASCII value converts), and binary VRs by item size (a value of a whole number
#: of items converts): what the ingest's value check takes as decodable without converting (rawread, fastwalk)
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
ITEM_SIZES = {"US": 2, "SS": 2, "OW": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "OF": 4, "OL": 4,
              "FD": 8, "SV": 8, "UV": 8, "OD": 8, "OV": 8}
_US_TAGS = frozenset({0x00280002, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102, 0x00280103})
_MAX_TEXT = 256
_READY = "medflow-guard-worker-ready"
_START_TIMEOUT_S = 60.0


_quiet = threading.local()


class _DropWhileGuarding(logging.Filter):
    """Drops pydicom log records emitted while this thread reads an untrusted file (they can quote values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


_PYDICOM_LOGGER = logging.getLogger("pydicom")
if not any(isinstance(f, _DropWhileGuarding) for f in _PYDICOM_LOGGER.filters):
    _PYDICOM_LOGGER.addFilter(_DropWhileGuarding())


#: the entry ``warnings.simplefilter("ignore")`` puts first in ``warnings.filters``
_IGNORE_ALL = ("ignore", None, Warning, None, 0)


@contextlib.contextmanager
def _silenced():
    """No pydicom warnings or log records (both can quote element values) inside the block.

    Inside a block of its own whose "ignore every warning" filter still comes first, it adds nothing
    (``warnings.catch_warnings`` copies the filter list: some 7 us, twice per file read otherwise).
    """
    previous = getattr(_quiet, "active", False)
    if previous and warnings.filters and warnings.filters[0] == _IGNORE_ALL:
        yield
        return
    _quiet.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet.active = previous


class _Reject(Exception):
    """Internal: carries a reason code and a PHI-free detail (never leaves this module)."""

    def __init__(self, reason: str, detail: str, exception_type: str | None = None):
        super().__init__(reason)
        assert reason in REASON_CODES, reason
        self.reason = reason
        self.detail = detail
        self.exception_type = exception_type


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str | None:
    """pydicom's dictionary VR of ``tag`` (PS3.6; None for a tag it does not know, e.g. a private one).

    Cached per tag: implicit-VR data sets ask for every element of every file. Pass an ``int``
    (a ``BaseTag`` key would be compared by pydicom's Python-level ``__eq__`` on every hit).
    """
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _dictionary_is_sq(tag: int) -> bool:
    return dictionary_vr(int(tag)) == "SQ"

