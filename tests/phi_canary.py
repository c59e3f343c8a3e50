"""PHI canary: plant a unique marker in every identifying slot of a DICOM dataset, then grep for it.

Shared test utility (also used by the end-to-end canary test against ``medflow run``)::

    planted = plant_canary(ds, "CNRY5e1f0a")       # modifies ds in place
    ...write ds, run the pipeline / de-identifier...
    hits = scan_for_canary(workspace, planted.variants)
    assert not hits, hits

:func:`plant_canary` writes, recursively through every sequence item:

* the canary text into every PN (``CANARY^CANARY``), LO, SH, ST, LT, UT, UC and AE
  element, and every private element (text VRs get the text, binary VRs the bytes,
  private sequences are recursed; private creators are overwritten too);
* a canary-derived date into every DA (``19YYMMDD`` from a hash of the canary), a
  canary-derived time into every TM and ``date+time`` into every DT;
* a canary-derived UID into every instance-type UI element (class, transfer syntax
  and coding-scheme UIDs are left alone so the object stays decodable). The mapping
  old UID -> canary UID is deterministic, so references between files (RTSTRUCT ->
  CT) stay consistent when every file of a study is planted with the same canary.

It also adds a private block ``(0011,0010) = "<canary> CREATOR"`` / ``(0011,1001)`` so
every dataset carries at least one private element. CS, DS, IS, numbers and pixel data
are not touched (the pipeline needs them).

:func:`scan_for_canary` reads every file below a folder - including SQLite databases,
Prefect result files, Zarr metadata and hidden files - and looks for every variant as
UTF-8, UTF-16-LE, and base64 / URL-safe base64 in all three byte alignments; gzip/zlib
(and zstd, through numcodecs when importable) compressed files are also searched
decompressed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import pathlib
import zlib
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "AE"})
NOT_PLANTED_UI = frozenset(int(Tag(k)) for k in (
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "CodingSchemeUID", "ContextUID", "MappingResourceUID",
    "ContextGroupExtensionCreatorUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile",
))
MAX_SCAN_BYTES = 512 * 1024 * 1024
_DECOMPRESS_CAP = 256 * 1024 * 1024


@dataclass
class Planted:
    """What :func:`plant_canary` wrote; ``variants`` are the strings to search for."""

    canary: str
    date: str
    time: str
    uids: dict[str, str] = field(default_factory=dict)  # original -> planted
    counts: dict[str, int] = field(default_factory=dict)  # VR (or "private") -> elements planted

    @property
    def datetime(self) -> str:
        return self.date + self.time

    @property
    def variants(self) -> list[str]:
        return [self.canary, self.date, self.time, *sorted(set(self.uids.values()))]

    def merge(self, other: Planted) -> Planted:
        """Combine the records of several datasets planted with the same canary."""
        if (other.canary, other.date, other.time) != (self.canary, self.date, self.time):
            raise ValueError("merge needs datasets planted with the same canary")
        self.uids.update(other.uids)
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        return self


def _digest(canary: str, salt: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{canary}".encode()).digest()


def canary_date(canary: str) -> str:
    h = _digest(canary, "date")
    return f"19{10 + h[0] % 80:02d}{1 + h[1] % 12:02d}{1 + h[2] % 28:02d}"


def canary_time(canary: str) -> str:
    h = _digest(canary, "time")
    micro = int.from_bytes(h[3:6], "big") % 1_000_000
    return f"{h[0] % 24:02d}{h[1] % 60:02d}{h[2] % 60:02d}.{micro:06d}"


def canary_uid(canary: str, old: str) -> str:
    n = int.from_bytes(hashlib.sha256(f"uid\x00{canary}\x00{old}".encode()).digest()[:15], "big")
    return f"2.25.{n}"


def _count(p: Planted, key: str) -> None:
    p.counts[key] = p.counts.get(key, 0) + 1


def _plant(ds: Dataset, p: Planted) -> None:
    for elem in list(ds):
        tag = int(elem.tag)
        if elem.VR == "SQ":
            for item in elem.value or []:
                _plant(item, p)
            continue
        if elem.tag.is_private:
            if elem.VR in TEXT_VRS or elem.VR in ("PN", "CS", "UN"):
                elem.value = p.canary.encode() if elem.VR == "UN" else p.canary
            elif elem.VR in ("OB", "OW"):
                elem.value = p.canary.encode().ljust(len(p.canary) + len(p.canary) % 2, b" ")
            elif elem.VR in ("DA", "TM", "DT"):
                elem.value = {"DA": p.date, "TM": p.time, "DT": p.datetime}[elem.VR]
            elif elem.VR == "UI":
                elem.value = p.uids.setdefault(str(elem.value), canary_uid(p.canary, str(elem.value)))
            else:
                continue
            _count(p, "private")
            continue
        if tag >> 16 == 0x0002:
            continue
        vr = elem.VR
        if vr in TEXT_VRS:
            elem.value = p.canary
        elif vr == "PN":
            elem.value = f"{p.canary}^{p.canary}"
        elif vr == "DA":
            elem.value = p.date
        elif vr == "TM":
            elem.value = p.time
        elif vr == "DT":
            elem.value = p.datetime
        elif vr == "UI" and tag not in NOT_PLANTED_UI:
            vals = list(elem.value) if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
            new = [p.uids.setdefault(str(v), canary_uid(p.canary, str(v))) for v in vals if str(v)]
            if not new:
                continue
            elem.value = new[0] if len(new) == 1 else new
        else:
            continue
        _count(p, vr)


def plant_canary(ds: Dataset, canary: str) -> Planted:
    """Write ``canary`` (and values derived from it) into every identifying slot of ``ds`` in place.

    ``canary`` should be 8-16 characters of [A-Za-z0-9] (it must fit SH and AE values).
    The file meta Media Storage SOP Instance UID follows the planted SOP Instance UID.
    """
    if not canary.isalnum() or not 8 <= len(canary) <= 16:
        raise ValueError(f"canary must be 8-16 alphanumeric characters, got {canary!r}")
    p = Planted(canary=canary, date=canary_date(canary), time=canary_time(canary))
    ds.add_new(0x00110010, "LO", f"{canary} CREATOR")
    ds.add_new(0x00111001, "LO", canary)
    _plant(ds, p)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return p


# -- scanning ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    path: str  # relative to the scanned root
    variant: str
    encoding: str  # "utf-8", "utf-16-le", "base64+<k>", "urlsafe-base64+<k>", "<codec>:<encoding>"
    offset: int


def _needles(variant: str) -> list[tuple[str, bytes]]:
    raw = variant.encode("utf-8")
    out = [("utf-8", raw), ("utf-16-le", variant.encode("utf-16-le"))]
    for k in range(3):
        chunk = raw[k:]
        chunk = chunk[: len(chunk) - len(chunk) % 3]
        if len(chunk) < 3:
            continue
        enc = base64.b64encode(chunk)
        out.append((f"base64+{k}", enc))
        url = base64.urlsafe_b64encode(chunk)
        if url != enc:
            out.append((f"urlsafe-base64+{k}", url))
    return out


def _decompressed(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    if data[:2] == b"\x1f\x8b":
        try:
            out.append(("gzip", gzip.decompress(data)[:_DECOMPRESS_CAP]))
        except (OSError, EOFError, zlib.error):
            pass
    elif data[:1] == b"\x78" and len(data) > 2 and (data[0] * 256 + data[1]) % 31 == 0:
        try:
            out.append(("zlib", zlib.decompressobj().decompress(data, _DECOMPRESS_CAP)))
        except zlib.error:
            pass
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import numcodecs

            out.append(("zstd", bytes(numcodecs.Zstd().decode(data))[:_DECOMPRESS_CAP]))
        except Exception:  # numcodecs missing or frame damaged
            pass
    return out


def scan_bytes(data: bytes, variants: list[str], *, path: str = "") -> list[Hit]:
    hits = []
    for variant in variants:
        for enc, needle in _needles(variant):
            at = data.find(needle)
            if at >= 0:
                hits.append(Hit(path=path, variant=variant, encoding=enc, offset=at))
    return hits


def scan_for_canary(root_dir, canary_variants: list[str]) -> list[Hit]:
    """Every occurrence (first per file, variant and encoding) of the variants below ``root_dir``."""
    root = pathlib.Path(root_dir)
    variants = [v for v in canary_variants if v]
    hits: list[Hit] = []
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        rel = p.name if p == root else os.fspath(p.relative_to(root))
        try:
            data = p.read_bytes()[:MAX_SCAN_BYTES]
        except OSError:
            continue
        hits.extend(scan_bytes(data, variants, path=rel))
        for codec, inner in _decompressed(data):
            hits.extend(Hit(path=h.path, variant=h.variant, encoding=f"{codec}:{h.encoding}", offset=h.offset)
                        for h in scan_bytes(inner, variants, path=rel))
    return hits
