"""Pure image science for medflow.

Every module in this package is a plain function of arrays: numpy or dask arrays
in, numpy/dask arrays or pandas tables out. Nothing here imports Prefect, pydicom,
zarr or :mod:`storage`, and nothing here touches files (``tests/test_boundaries.py``
enforces this).

Conventions used everywhere
---------------------------
* A 3-D ``volume`` is indexed ``volume[axis0, axis1, axis2]``; for DICOM-derived
  volumes this is ``[slice, row, column]``.
* ``spacing`` is the voxel size in millimetres **in array-axis order**
  (``(d0, d1, d2)``), as scipy/scikit-image expect.
* ``affine`` is a 4x4 matrix mapping homogeneous array indices
  ``(i0, i1, i2, 1)`` to patient coordinates in millimetres, DICOM LPS
  (PS3.3 C.7.6.2.1.1).
* ``mask`` is a boolean array on the grid of its ``volume``; ``labels`` is an
  integer array where 0 is background.
"""
