"""The only package in medflow that touches files: DICOM, Zarr, NIfTI/NRRD, the catalog."""
