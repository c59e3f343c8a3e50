"""PACS access: pull DICOM studies by DIMSE or DICOMweb into the workspace, write results back as DICOM.

* :mod:`storage.pacs.uri` -- source URIs (``dimse://``, ``dicomweb+http(s)://``), query keys, credentials policy
* :mod:`storage.pacs.pull` -- query, retrieve, completeness, retries, the complete staging folder
* :mod:`storage.pacs.dimse` / :mod:`storage.pacs.dicomweb` -- the two protocols
* :mod:`storage.pacs.writeback` -- DICOM SEG + TID 1500 SR built with highdicom, stored by C-STORE or STOW-RS
* :mod:`storage.pacs.catalog` -- the ``pacs_transfer`` catalog table
"""

import logging

from storage.pacs.uri import PacsUriError, is_pacs_uri, parse_source

# Both libraries log requests with their query (a patient ID, accession number, UIDs) at INFO/DEBUG:
# keep them at WARNING so nothing identifying reaches a log handler (Prefect's included).
for _name in ("pynetdicom", "dicomweb_client"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = ["PacsUriError", "is_pacs_uri", "parse_source"]
