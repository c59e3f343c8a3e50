"""Safe private attributes kept by the Retain Safe Private Option (PS3.15 E.3.10).

A private attribute is identified by its private creator string, its (odd) group and
the low byte of its element number (the block byte ``xx`` of ``(gggg,xxee)`` is
assigned per file by the private creator element ``(gggg,00xx)``).

:data:`SAFE_PRIVATE` is a deliberately small subset of PS3.15 Table E.3.10-1
("Safe Private Attributes"): numeric acquisition/scaling parameters that medical
image analysis needs (diffusion b-values and directions, Philips MR/PET scale
factors, mosaic layout, table speed). Every other private attribute - including
vendor text headers such as Siemens CSA headers - is removed even with the option on.
"""

from __future__ import annotations

#: (private creator, group, element low byte) -> attribute meaning
SAFE_PRIVATE: dict[tuple[str, int, int], str] = {
    ("GEMS_ACQU_01", 0x0019, 0x23): "Table Speed [mm/rotation]",
    ("GEMS_PARM_01", 0x0043, 0x27): "Scan Pitch Ratio",
    ("GEMS_PARM_01", 0x0043, 0x39): "Slop_int_6..9 (diffusion b-value)",
    ("SIEMENS MR HEADER", 0x0019, 0x0A): "Number of Images in Mosaic",
    ("SIEMENS MR HEADER", 0x0019, 0x0B): "Slice Measurement Duration",
    ("SIEMENS MR HEADER", 0x0019, 0x0C): "B Value",
    ("SIEMENS MR HEADER", 0x0019, 0x0D): "Diffusion Directionality",
    ("SIEMENS MR HEADER", 0x0019, 0x0E): "Diffusion Gradient Direction",
    ("SIEMENS MR HEADER", 0x0019, 0x27): "B Matrix",
    ("Philips Imaging DD 001", 0x2001, 0x03): "Diffusion B-Factor",
    ("Philips Imaging DD 001", 0x2001, 0x04): "Diffusion Direction",
    ("Philips MR Imaging DD 001", 0x2005, 0x0D): "Scale Intercept",
    ("Philips MR Imaging DD 001", 0x2005, 0x0E): "Scale Slope",
    ("Philips PET Private Group", 0x7053, 0x00): "SUV Factor",
    ("Philips PET Private Group", 0x7053, 0x09): "Activity Concentration Scale Factor",
}


def is_safe_private(creator: str | None, tag: int) -> bool:
    """True when the private data element ``tag`` under ``creator`` is on the allow-list."""
    if not creator:
        return False
    group, elem = tag >> 16, tag & 0xFFFF
    if elem < 0x1000:  # creator elements and (gggg,0000-00FF) are not data elements
        return False
    return (str(creator).strip(), group, elem & 0xFF) in SAFE_PRIVATE
