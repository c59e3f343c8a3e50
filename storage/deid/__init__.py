"""DICOM de-identification per DICOM PS3.15 Annex E (Basic Application Level Confidentiality Profile).

Public API::

    from storage.deid import DeidOptions, deidentify_dataset, deidentify_folder, DeidRejected

The profile table (PS3.15 Table E.1-1, 621 rows) ships inside this package
(``confidentiality_profile_attributes.json``, MIT licence of Innolitics in
``LICENSE.txt``, provenance in ``SOURCE.md``).
"""

from storage.deid.engine import DeidRejected, deidentify_dataset, patient_identity
from storage.deid.folder import DeidReport, deidentify_folder
from storage.deid.options import DeidOptions

__all__ = ["DeidOptions", "DeidRejected", "DeidReport", "deidentify_dataset", "deidentify_folder",
           "patient_identity"]
