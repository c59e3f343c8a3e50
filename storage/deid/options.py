"""Options of the de-identifier (PS3.15 E.1.1 Basic Profile + selected E.3 options)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DeidOptions(BaseModel):
    """Which PS3.15 Annex E options the de-identifier applies on top of the Basic Profile.

    Every option defaults to off, i.e. the plain Basic Application Level
    Confidentiality Profile (CID 7050 code 113100).

    Attributes
    ----------
    retain_longitudinal_modified_dates : bool
        Retain Longitudinal Temporal Information with Modified Dates Option (E.3.6,
        code 113107): every DA/DT of the table's date rows is shifted by one whole-day
        offset per patient (``PseudonymKeys.date_shift_days(PatientID)``, in [-365, -1])
        instead of being removed/emptied; intervals are preserved. TM values keep their
        time of day (a whole-day shift does not change it).
    retain_patient_characteristics : bool
        Retain Patient Characteristics Option (E.3.7, code 113108): sex, age, size,
        weight, ... kept (K rows); free-text characteristics (C rows) cleaned.
    clean_descriptors : bool
        Clean Descriptors Option (E.3.5, code 113105): descriptor attributes (C rows,
        e.g. Series Description, Protocol Name, ROI Name) are *cleaned* instead of
        removed/emptied. Without an NLP scrubber, "clean" keeps only the words of a
        documented safe vocabulary (:mod:`storage.deid.vocabulary`) and short numbers;
        everything else is dropped, and a value with nothing safe left becomes empty.
    retain_safe_private : bool
        Retain Safe Private Option (E.3.10, code 113111): private attributes of the
        documented allow-list (:mod:`storage.deid.private`) are kept with their private
        creator; all other private attributes are removed.
    allow_burned_in : bool
        Accept images that may carry burned-in text (see :mod:`storage.deid.burned_in`).
        Default False: such images are refused with reason ``"burned_in_annotation"``.
        Accepting them does NOT clean pixels (no Clean Pixel Data Option is claimed).
    retain_unlisted_text : bool
        Keep text and date attributes that Table E.1-1 does not list, as the Basic Profile
        permits. Default False: medflow cleans them too (PN/AE emptied, free text through the
        safe vocabulary, code items kept only for known coding schemes, dates shifted or
        emptied), because any text slot can carry PHI (see ``engine._clean_unlisted``).
    pseudonymize_patient : bool
        Write the patient pseudonym (``PseudonymKeys.patient_key``) into Patient ID and
        Patient's Name instead of an empty value (both are Z/D or Z: a dummy value
        consistent with the VR is allowed), so de-identified files stay grouped by patient.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_longitudinal_modified_dates: bool = Field(False, description="E.3.6 (113107): shift dates per patient")
    retain_patient_characteristics: bool = Field(False, description="E.3.7 (113108)")
    clean_descriptors: bool = Field(False, description="E.3.5 (113105): safe-vocabulary cleaning")
    retain_safe_private: bool = Field(False, description="E.3.10 (113111): keep allow-listed private tags")
    allow_burned_in: bool = Field(False, description="accept images that may carry burned-in text")
    retain_unlisted_text: bool = Field(False, description="keep text/dates not listed in Table E.1-1")
    pseudonymize_patient: bool = Field(True, description="Patient ID/Name := patient pseudonym")
