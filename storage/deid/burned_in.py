"""Which images may carry burned-in identifying text (PS3.15 E.3.1, Clean Pixel Data).

medflow does not clean pixels. An image is refused (reason ``"burned_in_annotation"``)
unless ``DeidOptions.allow_burned_in`` when

* Burned In Annotation (0028,0301) is ``"YES"``, or
* Burned In Annotation is absent or empty and the Modality is in
  :data:`RISKY_MODALITIES` or the SOP Class is in :data:`RISKY_SOP_CLASSES`
  (modalities where screen captures and text overlays rendered into the pixels are
  common: ultrasound, X-ray angiography/fluoroscopy, endoscopy, photography,
  secondary capture, scanned documents).

``BurnedInAnnotation == "NO"`` is trusted. Objects without pixels (RTSTRUCT, SR, ...)
are never refused. Encapsulated documents (PDF, CDA, STL...) are refused with
reason ``"encapsulated_document"``: their content cannot be de-identified here.
"""

from __future__ import annotations

RISKY_MODALITIES = frozenset({
    "US", "IVUS", "XA", "RF", "ES", "XC", "GM", "SM", "OP", "OT", "DOC", "SC", "VL", "ECG", "HD",
})
RISKY_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",      # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",      # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",      # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",      # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.6.1",      # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.6.2",      # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.3.1",      # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.12.1",     # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",     # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.1",   # VL Endoscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.1.1", # Video Endoscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.2",   # VL Microscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.2.1", # Video Microscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.4",   # VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.77.1.4.1", # Video Photographic Image
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", # Ophthalmic Photography 8 Bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.2", # Ophthalmic Photography 16 Bit
})
ENCAPSULATED_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def burned_in_risk(ds) -> str | None:
    """A refusal reason code for ``ds``, or None when it may be de-identified by header rules."""
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if sop.startswith(ENCAPSULATED_DOCUMENT_PREFIX):
        return "encapsulated_document"
    has_pixels = any(t in ds for t in _PIXEL_TAGS)
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "burned_in_annotation"
    if flag == "NO" or not has_pixels:
        return None
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in RISKY_MODALITIES or sop in RISKY_SOP_CLASSES:
        return "burned_in_annotation"
    return None
