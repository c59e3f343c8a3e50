"""Resolution of combined Basic Profile actions (PS3.15 E.3 / Table E.1-1 notes).

The standard resolves a combined action by the attribute's Type in the IOD:

* ``X/Z``    -> Z when the attribute is Type 2 (or 1) in the IOD, else X;
* ``X/D``    -> D when Type 1 or 2, else X;
* ``Z/D``    -> D when Type 1, else Z;
* ``X/Z/D``  -> D when Type 1, Z when Type 2, else X;
* ``X/Z/U*`` -> U* (keep the sequence, replace the UIDs it contains) when Type 1, Z when
  Type 2, else X.

Conditional Types count as their unconditional ones (1C as 1, 2C as 2): medflow does not
evaluate the conditions, and the stronger requirement keeps the object valid whenever the
condition holds (an emptied or dummy value discloses nothing either way).

medflow has no full IOD tables. Instead :data:`REQUIRED_TYPES` lists, for the IODs medflow
handles (CT, MR, PET, RT Structure Set, Segmentation, and the enhanced CT/MR/PET IODs), the
Type 1/1C/2/2C *top-level* attributes that occur in Table E.1-1, taken from PS3.3 (modules:
Patient, Patient Study, General Study, General/CT/MR/PET/Enhanced PET/RT/Segmentation
Series, General/Enhanced General Equipment, General Image, PET Image, Enhanced CT/MR/PET
Image, Multi-frame Functional Groups, Acquisition Context, Contrast/Bolus, Structure Set,
RT ROI Observations, Approval, Segmentation Image / Content Identification). Anything not
listed is Type 3 (or not part of the IOD) and gets the most removing action (X, or Z for
``Z/D``). ``tests/test_deid_exact.py`` checks every combined row of Table E.1-1 in every
handled IOD against the module tables of PS3.3 as shipped (machine-readable) by highdicom.

Nested occurrences (inside a sequence item) are resolved with the same top-level table,
except ``X/Z/U*``: a Referenced/Source Image Sequence inside an item (the SEG Derivation
Image functional group, image-to-image references) is kept with every UID replaced by the
same consistent new UID as the instance it references (U*), preserving referential
integrity without retaining any original identifier.
"""

from __future__ import annotations

from pydicom.tag import Tag

# SOP Class UID -> IOD family
_CT = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.2")
_ENH_CT = ("1.2.840.10008.5.1.4.1.1.2.1",)
_MR = ("1.2.840.10008.5.1.4.1.1.4",)
_ENH_MR = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4")
_PET = ("1.2.840.10008.5.1.4.1.1.128",)
_ENH_PET = ("1.2.840.10008.5.1.4.1.1.130",)
_RTSTRUCT = ("1.2.840.10008.5.1.4.1.1.481.3",)
_SEG = ("1.2.840.10008.5.1.4.1.1.66.4",)

IOD_OF_SOP_CLASS: dict[str, str] = {}
for _name, _uids in (("CT", _CT), ("ENHANCED_CT", _ENH_CT), ("MR", _MR), ("ENHANCED_MR", _ENH_MR),
                     ("PET", _PET), ("ENHANCED_PET", _ENH_PET), ("RTSTRUCT", _RTSTRUCT), ("SEG", _SEG)):
    for _u in _uids:
        IOD_OF_SOP_CLASS[_u] = _name


def _t(*pairs: tuple[str, int]) -> dict[int, int]:
    return {int(Tag(k)): v for k, v in pairs}


#: Type 1/2 attributes common to every composite IOD handled (Patient, General Study,
#: General Series, General Equipment, SOP Common modules; PS3.3 C.7.1.1, C.7.2.1, C.7.3.1, C.7.5.1, C.12.1)
COMMON = _t(
    ("PatientName", 2), ("PatientID", 2), ("PatientBirthDate", 2), ("PatientSex", 2),
    ("StudyInstanceUID", 1), ("StudyDate", 2), ("StudyTime", 2), ("ReferringPhysicianName", 2),
    ("StudyID", 2), ("AccessionNumber", 2),
    ("SeriesInstanceUID", 1), ("SOPInstanceUID", 1), ("Manufacturer", 2),
    # Patient Study (C.7.2.2, user optional in every IOD handled): Patient's Sex Neutered 2C
    ("PatientSexNeutered", 2),
)
_IMAGE = _t(("FrameOfReferenceUID", 1), ("ContentDate", 2), ("ContentTime", 2))
#: Multi-frame Functional Groups (C.7.6.16) and Enhanced General Equipment (C.7.5.2)
_MULTIFRAME = _t(("FrameOfReferenceUID", 1), ("ContentDate", 1), ("ContentTime", 1),
                 ("Manufacturer", 1), ("ManufacturerModelName", 1), ("DeviceSerialNumber", 1),
                 ("SoftwareVersions", 1))
#: Enhanced CT/MR/PET Image (C.8.15.2, C.8.13.1, C.8.22.3): Acquisition DateTime 1C; CT/MR/Enhanced PET
#: Series (C.8.15.1, C.8.13.6, C.8.22.1): Referenced Performed Procedure Step Sequence 1C; Acquisition
#: Context (C.7.6.14, mandatory in these IODs): Acquisition Context Sequence 2
_ENHANCED = {**_MULTIFRAME, **_t(("AcquisitionDateTime", 1), ("ReferencedPerformedProcedureStepSequence", 1),
                                 ("AcquisitionContextSequence", 2))}
REQUIRED_TYPES: dict[str, dict[int, int]] = {
    "CT": {**COMMON, **_IMAGE},
    "MR": {**COMMON, **_IMAGE},
    # PET Series (C.8.9.1): Series Date/Time Type 1; PET Image (C.8.9.4): Acquisition Date/Time Type 2;
    # Acquisition Context (C.7.6.14, user optional in the PET IOD): Acquisition Context Sequence Type 2
    "PET": {**COMMON, **_IMAGE, **_t(("SeriesDate", 1), ("SeriesTime", 1), ("AcquisitionDate", 2),
                                     ("AcquisitionTime", 2), ("AcquisitionContextSequence", 2))},
    "ENHANCED_CT": {**COMMON, **_ENHANCED},
    "ENHANCED_MR": {**COMMON, **_ENHANCED},
    "ENHANCED_PET": {**COMMON, **_ENHANCED},  # Enhanced PET Series: Series Date/Time are Type 3
    # RT Series (C.8.8.1): Operators' Name Type 2; Structure Set (C.8.8.5); RT ROI Observations
    # (C.8.8.8): ROI Interpreter Type 2; Approval (C.8.8.16): Reviewer Name Type 2C
    "RTSTRUCT": {**COMMON, **_t(("OperatorsName", 2), ("StructureSetLabel", 1), ("StructureSetDate", 2),
                                ("StructureSetTime", 2), ("ROIName", 2), ("ROIInterpreter", 2),
                                ("ReviewerName", 2), ("ReferencedFrameOfReferenceUID", 1))},
    # Segmentation: Multi-frame Functional Groups, Enhanced General Equipment, Content Identification
    # (C.10.9: Content Label 1, Content Description 2, Content Creator's Name 2); Segmentation Series
    # (C.8.20.1): Referenced Performed Procedure Step Sequence 1C
    "SEG": {**COMMON, **_MULTIFRAME, **_t(("ContentLabel", 1), ("ContentDescription", 2),
                                          ("ContentCreatorName", 2), ("SegmentLabel", 1),
                                          ("ReferencedPerformedProcedureStepSequence", 1))},
}


def iod_of(sop_class_uid: str | None) -> str | None:
    return IOD_OF_SOP_CLASS.get(str(sop_class_uid or "").strip())


def attribute_type(tag: int, iod: str | None) -> int:
    """1, 2 or 3 (3 = not known to be required) for ``tag`` in ``iod``."""
    table = REQUIRED_TYPES.get(iod or "", COMMON)
    return table.get(int(tag), 3)


def resolve(action: str, tag: int, iod: str | None, *, nested: bool = False) -> str:
    """Resolve a (possibly combined) Basic Profile action to one of X, Z, D, K, C, U, U*.

    ``nested`` is True for an attribute inside a sequence item (only ``X/Z/U*`` differs:
    nested reference sequences are kept with replaced UIDs, see the module docstring).
    """
    if "/" not in action:
        return action
    t = attribute_type(tag, iod)
    if action == "X/Z/U*":
        return "U*" if nested or t == 1 else ("Z" if t == 2 else "X")
    if action == "X/Z":
        return "Z" if t in (1, 2) else "X"
    if action == "X/D":
        return "D" if t in (1, 2) else "X"
    if action == "Z/D":
        return "D" if t == 1 else "Z"
    if action == "X/Z/D":
        return {1: "D", 2: "Z"}.get(t, "X")
    raise ValueError(f"unknown combined action {action!r}")
