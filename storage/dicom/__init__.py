"""DICOM input: scanning, guarding, grouping, converting, de-identifying.

Raw DICOM headers never leave this package: what it hands to the rest of medflow
are arrays, geometry and a whitelisted, PHI-free metadata dict (see
:class:`storage.dicom.model.ConvertedVolume`).
"""
