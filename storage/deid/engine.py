"""PS3.15 Annex E de-identification of one pydicom Dataset.

:func:`deidentify_dataset` applies the Basic Application Level Confidentiality
Profile (Table E.1-1, loaded from the packaged JSON) plus the options of
:class:`~storage.deid.options.DeidOptions`, recursively in every item of every
sequence, and returns a new Dataset (the input object is never modified).

Actions (PS3.15 E.1.1, Table E.1-1 "Basic Profile" column):

* ``X`` remove; ``Z`` zero-length value; ``D`` dummy value of the VR (:data:`DUMMY`);
  ``K`` keep; ``C`` clean (dates shifted, text filtered through the safe vocabulary);
  ``U`` a new UID, consistent for a given secret (``PseudonymKeys.new_uid``);
* combined actions resolved by :func:`storage.deid.iod.resolve` (Type 1/2 table);
* option columns: when an enabled option gives ``K`` it wins, else ``C``;
* private attributes (odd groups) are removed, except the safe allow-list under the
  Retain Safe Private Option; private creators are kept only for retained elements;
* curves ``(50xx,xxxx)`` are removed per the table; overlays: the table removes
  ``(60xx,3000)`` Overlay Data and ``(60xx,4000)`` Overlay Comments - medflow removes the
  whole ``60xx`` overlay group (a group without its Type 1 Overlay Data would be invalid,
  and Overlay Description/Label may carry text);
* group lengths ``(gggg,0000)``, stray file meta elements and command elements ``(0000,eeee)``
  are removed (a stored instance cannot hold a Command Set - PS3.10 - so for the table's
  ``(0000,1001)`` Requested SOP Instance UID, marked U, medflow applies X);
  the File Meta Information is rebuilt (Media Storage SOP Instance UID = the new SOP
  Instance UID; no source AE titles);
* attributes the table does not list: free text is cleaned and dates follow the date policy
  (see :func:`_clean_unlisted`; ``retain_unlisted_text=True`` keeps them as the Basic Profile allows);
* every UI element the table marks ``U`` is replaced, and so is every other UI value that
  is not a registered DICOM UID (class, transfer syntax and coding-scheme UID attributes
  excepted): references such as Referenced SOP Instance UID or Referenced Frame of
  Reference UID get the same new UID as the instance they point to.

Afterwards Patient Identity Removed = YES, De-identification Method and the CID 7050
De-identification Method Code Sequence (113100 + one code per option applied) are set.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, UID_dictionary

from storage.deid.burned_in import burned_in_risk
from storage.deid.iod import attribute_type, iod_of, resolve
from storage.deid.options import DeidOptions
from storage.deid.private import is_safe_private
from storage.deid.profile import OPTION_COLUMNS, Profile, Rule, load_profile
from storage.deid.vocabulary import KERNEL_RE, clean_text, is_known_code
from storage.dicom.model import Rejection
from storage.pseudonym import PseudonymKeys

MAX_DEPTH = 32  # deeper nesting is refused (pydicom recursion; PHI could hide there)
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
DUMMY: dict[str, object] = {
    "AE": "ANONYMIZED", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000.000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED",
    "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000.000000",
    "UC": "ANONYMIZED", "UR": "urn:medflow:anonymized", "UT": "ANONYMIZED",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
}
#: UI attributes that name a class, syntax or coding scheme, never an instance: not remapped
CLASS_UID_TAGS = frozenset(int(Tag(k)) for k in (
    "SOPClassUID", "ReferencedSOPClassUID", "AffectedSOPClassUID", "RequestedSOPClassUID",
    "MediaStorageSOPClassUID", "TransferSyntaxUID", "ImplementationClassUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile",
    "ReferencedRelatedGeneralSOPClassUIDInFile", "RelatedGeneralSOPClassUID",
    "OriginalSpecializedSOPClassUID", "CodingSchemeUID", "ContextUID", "MappingResourceUID",
    "ContextGroupExtensionCreatorUID", "TemplateExtensionCreatorUID", "SOPClassesInStudy",
    "ReferencedColorPaletteInstanceUID",
))
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
}
_PN_TAGS = {int(Tag("PatientID")), int(Tag("PatientName"))}
#: text attributes of a code sequence item, kept verbatim when the item's code is of a known scheme
CODE_ITEM_TAGS = frozenset(int(Tag(k)) for k in (
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue",
    "URNCodeValue", "ContextIdentifier", "ContextGroupVersion", "MappingResource", "MappingResourceName",
    "ContextGroupLocalVersion", "ContextGroupExtensionFlag",
))
_KERNEL_TAG = int(Tag("ConvolutionKernel"))
UNLISTED_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "AE"})


class DeidRejected(Exception):
    """The dataset cannot be de-identified safely; ``rejection`` says why (PHI-free)."""

    def __init__(self, rejection: Rejection):
        super().__init__(f"{rejection.reason}: {rejection.detail}")
        self.rejection = rejection


@dataclass
class _Ctx:
    options: DeidOptions
    keys: PseudonymKeys
    profile: Profile
    iod: str | None
    shift_days: int
    patient_pseudonym: str
    uid_cache: dict[str, str] = field(default_factory=dict)

    def new_uid(self, old: str) -> str:
        old = str(old).strip().rstrip("\x00")
        if not old:
            return old
        new = self.uid_cache.get(old)
        if new is None:
            new = self.uid_cache[old] = self.keys.new_uid(old)
        return new


def patient_identity(ds: Dataset) -> str:
    """The identifier pseudonymised for ``ds``: Patient ID, else ``"study:" + StudyInstanceUID``.

    Files without a Patient ID are thus grouped per study, not merged into one patient.
    """
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return pid
    return "study:" + str(ds.get("StudyInstanceUID", "") or "").strip()


# -- value helpers ---------------------------------------------------------------------------
def _values(value) -> list:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _set_values(elem: DataElement, vals: list) -> None:
    elem.value = vals[0] if len(vals) == 1 else vals


_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(.*)$")


def _shift_date(text: str, days: int) -> str | None:
    m = _DA_RE.match(text.strip())
    if not m:
        return None
    try:
        d = _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return (d + _dt.timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return None


def shift_da(value: str, days: int) -> str | None:
    """Shift one DA value (or a ``A-B`` range) by ``days``; None when unparseable."""
    value = str(value).strip()
    if "-" in value:
        parts = value.split("-")
        if len(parts) != 2:
            return None
        out = [_shift_date(p, days) if p else "" for p in parts]
        return None if any(o is None for o in out) else "-".join(out)  # type: ignore[arg-type]
    return _shift_date(value, days)


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of one DT value by ``days`` keeping its precision, time and offset."""
    value = str(value).strip()
    m = _DT_RE.match(value)
    if not m:
        return None
    y, mo, d, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    if mo is None and rest and rest[0].isdigit():
        return None
    try:
        base = _dt.date(int(y), int(mo or 1), int(d or 1)) + _dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    date = base.strftime("%Y%m%d")[: 4 + (2 if mo else 0) + (2 if d else 0)]
    return date + rest


# -- per-element actions ----------------------------------------------------------------------
def _dummy(elem: DataElement, ctx: _Ctx) -> object:
    vr = elem.VR
    if int(elem.tag) in _PN_TAGS and ctx.options.pseudonymize_patient:
        return ctx.patient_pseudonym
    if vr == "UI":
        vals = [ctx.new_uid(v) for v in _values(elem.value) if str(v).strip()]
        return (vals[0] if len(vals) == 1 else vals) if vals else ctx.new_uid("medflow-dummy")
    if vr == "SQ":
        return Sequence([Dataset()])
    if vr in BINARY_VRS:
        return b"\x00" * 8
    return DUMMY.get(vr, "ANONYMIZED")


def _empty(elem: DataElement, ctx: _Ctx) -> object:
    if int(elem.tag) in _PN_TAGS and ctx.options.pseudonymize_patient:
        return ctx.patient_pseudonym
    if elem.VR == "SQ":
        return Sequence([])
    return elem.empty_value


def _clean(ds: Dataset, elem: DataElement, rule: Rule, ctx: _Ctx, depth: int) -> bool:
    """Apply C; False when C cannot be applied (the caller then falls back to the Basic action)."""
    vr = elem.VR
    vals = _values(elem.value)
    if vr in ("DA", "DT", "TM"):
        if not ctx.options.retain_longitudinal_modified_dates:
            return False
        return _clean_dates(elem, ctx)  # TM: whole-day shift leaves the time of day unchanged
    if vr == "SQ":
        for item in elem.value:
            _process(item, ctx, depth + 1)
        return True
    if vr in TEXT_VRS:
        cleaned = [clean_text(str(v)) for v in vals]
        cleaned = [c for c in cleaned if c]
        if not cleaned:
            if attribute_type(int(elem.tag), ctx.iod) == 1:
                elem.value = _dummy(elem, ctx)
            else:
                elem.value = elem.empty_value
        else:
            _set_values(elem, cleaned)
        return True
    return False


def _effective_action(rule: Rule, ctx: _Ctx, tag: int, depth: int) -> str:
    opt_actions = [rule.options[col] for col, fld in OPTION_COLUMNS.items()
                   if col in rule.options and getattr(ctx.options, fld)]
    if "K" in opt_actions:
        return "K"
    if "C" in opt_actions:
        return "C"
    return resolve(rule.basic, tag, ctx.iod, nested=depth > 0)


def _apply(ds: Dataset, elem: DataElement, action: str, rule: Rule, ctx: _Ctx, depth: int) -> None:
    tag = elem.tag
    if action == "C":
        if _clean(ds, elem, rule, ctx, depth):
            return
        action = resolve(rule.basic, int(tag), ctx.iod, nested=depth > 0)
    if action == "K":
        if elem.VR == "SQ":
            for item in elem.value:
                _process(item, ctx, depth + 1)
        return
    if action == "X":
        del ds[tag]
    elif action == "Z":
        elem.value = _empty(elem, ctx)
    elif action == "D":
        elem.value = _dummy(elem, ctx)
    elif action in ("U", "U*"):
        if elem.VR == "SQ":
            for item in elem.value:
                _process(item, ctx, depth + 1)
        elif elem.VR == "UI":
            vals = [ctx.new_uid(v) for v in _values(elem.value)]
            if vals:
                _set_values(elem, vals)
        else:
            elem.value = _dummy(elem, ctx)
    else:
        raise ValueError(f"unsupported action {action!r} for {rule.tag}")


def _is_overlay_or_curve(group: int) -> bool:
    return (0x6000 <= group <= 0x601E or 0x5000 <= group <= 0x501E) and group % 2 == 0


def _remap_unlisted_ui(elem: DataElement, ctx: _Ctx) -> None:
    if int(elem.tag) in CLASS_UID_TAGS:
        return
    vals = _values(elem.value)
    if not vals:
        return
    _set_values(elem, [v if str(v).strip() in UID_dictionary else ctx.new_uid(v) for v in vals])


def _clean_unlisted(ds: Dataset, elem: DataElement, ctx: _Ctx, known_code: bool) -> None:
    """Attributes that Table E.1-1 does not list: free text is cleaned, dates follow the date policy.

    The Basic Profile would retain them; medflow is stricter by default
    (``DeidOptions.retain_unlisted_text=False``) because any text slot can hold PHI:

    * code sequence item attributes (Code Value, Coding Scheme Designator, Code Meaning, ...)
      are kept verbatim when the item's code belongs to a known coding scheme, else cleaned;
    * Convolution Kernel values that look like kernel names (``B30f``, ``FC13``) are kept;
    * PN and AE values are emptied; LO, SH, ST, LT, UT, UC values are cleaned through the safe
      vocabulary (a Type 1 attribute left empty gets the dummy value);
    * DA and DT values are shifted under the Modified Dates option and emptied otherwise;
      TM values are kept under that option (whole-day shift) and emptied otherwise.
    """
    vr, tag = elem.VR, int(elem.tag)
    if tag in CODE_ITEM_TAGS and known_code:
        return
    if vr in ("DA", "DT", "TM"):
        if not (ctx.options.retain_longitudinal_modified_dates and _clean_dates(elem, ctx)):
            elem.value = elem.empty_value
        return
    if vr not in UNLISTED_TEXT_VRS or elem.value in (None, "", b""):
        return
    if vr in ("PN", "AE"):
        elem.value = elem.empty_value
        return
    vals = [str(v) for v in _values(elem.value)]
    if tag == _KERNEL_TAG and all(KERNEL_RE.match(v.strip()) or clean_text(v) == v.strip() for v in vals):
        return
    cleaned = [c for c in (clean_text(v) for v in vals) if c]
    if cleaned:
        _set_values(elem, cleaned)
    elif attribute_type(tag, ctx.iod) == 1:
        elem.value = _dummy(elem, ctx)
    else:
        elem.value = elem.empty_value


def _clean_dates(elem: DataElement, ctx: _Ctx) -> bool:
    """Shift DA/DT values by the patient's shift (TM unchanged); False when a value is unparseable."""
    if elem.VR == "TM":
        return True
    fn = shift_da if elem.VR == "DA" else shift_dt
    out = [fn(str(v), ctx.shift_days) for v in _values(elem.value)]
    if any(o is None for o in out):
        return False
    if out:
        _set_values(elem, out)
    return True


def _process(ds: Dataset, ctx: _Ctx, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DeidRejected(Rejection(sha256="", reason="nesting_too_deep",
                                     detail=f"sequences nested deeper than {MAX_DEPTH} levels"))
    kept_creators: set[int] = set()
    creator_tags: list[int] = []
    known_code = is_known_code(ds.get("CodingSchemeDesignator"), ds.get("CodeValue", ds.get("LongCodeValue")))
    for tag in list(ds.keys()):
        t = int(tag)
        group, elem_no = t >> 16, t & 0xFFFF
        if group in (0x0000, 0x0002) or elem_no == 0x0000:  # command set, file meta, group lengths
            del ds[tag]
            continue
        if group & 1:  # private
            if 0x0010 <= elem_no <= 0x00FF:
                creator_tags.append(t)
                continue
            if ctx.options.retain_safe_private and elem_no >= 0x1000:
                creator_tag = (group << 16) | (elem_no >> 8)
                creator = ds[creator_tag].value if creator_tag in ds else None
                if is_safe_private(creator, t):
                    kept_creators.add(creator_tag)
                    continue
            del ds[tag]
            continue
        if _is_overlay_or_curve(group):
            del ds[tag]
            continue
        elem = ds[tag]
        rule = ctx.profile.rule_for(t)
        if rule is None:
            if elem.VR == "SQ" and elem.value:
                for item in elem.value:
                    _process(item, ctx, depth + 1)
            elif elem.VR == "UI":
                _remap_unlisted_ui(elem, ctx)
            elif not ctx.options.retain_unlisted_text:
                _clean_unlisted(ds, elem, ctx, known_code)
            continue
        _apply(ds, elem, _effective_action(rule, ctx, t, depth), rule, ctx, depth)
    for t in creator_tags:
        if t not in kept_creators:
            del ds[t]


def applied_option_codes(options: DeidOptions) -> list[tuple[str, str]]:
    """CID 7050 (code value, code meaning) for the profile and every enabled option."""
    keys = ["basic"] + [k for k in CID7050 if k != "basic" and getattr(options, k)]
    return [CID7050[k] for k in keys]


def _set_deid_attributes(ds: Dataset, ctx: _Ctx) -> None:
    ds.PatientIdentityRemoved = "YES"
    codes = applied_option_codes(ctx.options)
    ds.DeidentificationMethod = ["medflow: DICOM PS3.15 Annex E"] + [m[:64] for _c, m in codes]
    items = []
    for code, meaning in codes:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = (
        "MODIFIED" if ctx.options.retain_longitudinal_modified_dates else "REMOVED")


def _rebuild_file_meta(out: Dataset, original: Dataset) -> None:
    old_meta = getattr(original, "file_meta", None)
    ts = None
    if old_meta is not None:
        ts = old_meta.get("TransferSyntaxUID")
    if not ts:
        ts = ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDFLOW_DEID_1"
    out.file_meta = meta
    out.preamble = None


def deidentify_dataset(ds: Dataset, *, options: DeidOptions | None = None, keys: PseudonymKeys,
                       sha256: str = "") -> Dataset:
    """De-identify ``ds`` per PS3.15 Annex E; return a new Dataset (``ds`` is not modified).

    Parameters
    ----------
    ds : pydicom.Dataset
        A dataset read with pydicom (with or without file meta / pixel data).
    options : DeidOptions, optional
        Profile options (default: Basic Profile only).
    keys : PseudonymKeys
        The secret: new UIDs, the date shift and the patient pseudonym derive from it.
    sha256 : str, optional
        Digest of the source file, copied into a :class:`Rejection` when refused.

    Returns
    -------
    pydicom.Dataset
        The de-identified copy with rebuilt File Meta Information.

    Raises
    ------
    DeidRejected
        When the image may carry burned-in text (``"burned_in_annotation"``, unless
        ``options.allow_burned_in``), is an encapsulated document, or nests too deep.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if not isinstance(keys, PseudonymKeys):
        raise TypeError(f"keys must be PseudonymKeys, got {type(keys).__name__}")
    options = options or DeidOptions()
    reason = burned_in_risk(ds)
    if reason == "encapsulated_document" or (reason and not options.allow_burned_in):
        detail = ("encapsulated document: its content cannot be de-identified" if reason == "encapsulated_document"
                  else "image may carry burned-in text (BurnedInAnnotation YES, or absent on a risky "
                       "modality/SOP class); set allow_burned_in to accept it")
        raise DeidRejected(Rejection(sha256=sha256, reason=reason, detail=detail))
    identity = patient_identity(ds)
    ctx = _Ctx(options=options, keys=keys, profile=load_profile(), iod=iod_of(ds.get("SOPClassUID")),
               shift_days=keys.date_shift_days(identity), patient_pseudonym=keys.patient_key(identity))
    out = copy.deepcopy(ds)
    try:
        _process(out, ctx, 0)
    except DeidRejected as exc:
        exc.rejection.sha256 = sha256
        raise
    except RecursionError:
        raise DeidRejected(Rejection(sha256=sha256, reason="nesting_too_deep",
                                     detail="sequence nesting exhausted the recursion limit",
                                     exception_type="RecursionError")) from None
    if options.pseudonymize_patient:
        out.PatientID = ctx.patient_pseudonym
        out.PatientName = ctx.patient_pseudonym
    _set_deid_attributes(out, ctx)
    _rebuild_file_meta(out, ds)
    return out
