"""Read and write single images in research formats (NIfTI, NRRD).

Volumes come back in medflow's convention: ``volume[slice, row, column]``
(axis 0 is the slowest, through-plane axis), ``spacing`` in mm in array-axis
order, ``affine`` mapping array indices to patient LPS millimetres.

NIfTI stores ``data[i, j, k]`` with an affine to RAS; we transpose to
``[k, j, i]`` and convert RAS -> LPS (negate the first two rows). NRRD is read
in C order (``[k, j, i]`` already) and its ``space directions`` give the affine.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import numpy as np

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class ImageData:
    """A volume with its geometry.

    Attributes
    ----------
    volume : ndarray, shape (n0, n1, n2) or (n0, n1, n2, t)
    spacing : tuple of float, mm, array-axis order (spatial axes only)
    affine : ndarray (4, 4), array index -> LPS mm
    """

    volume: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    meta: dict = field(default_factory=dict)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]


def nifti_to_medflow(data: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert NIfTI ``data[i, j, k(, t)]`` + RAS affine to ``volume[k, j, i(, t)]`` + LPS affine."""
    lps = _RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    perm = [2, 1, 0] + list(range(3, data.ndim))
    volume = np.transpose(data, perm)
    affine = lps.copy()
    affine[:3, :3] = lps[:3, [2, 1, 0]]
    return np.ascontiguousarray(volume), affine


def medflow_to_nifti(volume: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`nifti_to_medflow`: ``volume[k, j, i(, t)]`` -> ``data[i, j, k(, t)]``, RAS affine."""
    perm = [2, 1, 0] + list(range(3, volume.ndim))
    data = np.transpose(volume, perm)
    affine = np.asarray(affine_lps, dtype=np.float64).copy()
    affine[:3, :3] = affine_lps[:3, [2, 1, 0]]
    return data, _RAS_TO_LPS @ affine


def read_nifti(path: str | pathlib.Path) -> ImageData:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    # apply scl_slope/inter exactly as nibabel does for get_fdata, but keep integer dtype when unscaled
    slope, inter = img.dataobj.slope, img.dataobj.inter
    if (slope not in (None, 1.0)) or (inter not in (None, 0.0)):
        data = np.asarray(img.get_fdata(dtype=np.float64))
    volume, affine = nifti_to_medflow(data, img.affine)
    return ImageData(volume=volume, spacing=spacing_from_affine(affine), affine=affine, meta={"format": "nifti"})


def read_nrrd(path: str | pathlib.Path) -> ImageData:
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")  # data[k, j, i]
    space = str(header.get("space", "left-posterior-superior")).lower()
    directions = np.asarray(header.get("space directions"), dtype=np.float64)  # rows: axis i, j, k (in mm)
    origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), dtype=np.float64)
    affine = np.eye(4)
    # header directions are listed in file (Fortran) axis order i, j, k; our axes are k, j, i
    affine[:3, :3] = directions[::-1].T
    affine[:3, 3] = origin
    if space in ("right-anterior-superior", "ras"):
        affine = _RAS_TO_LPS @ affine
    elif space not in ("left-posterior-superior", "lps"):
        raise ValueError(f"NRRD space {space!r} is not supported (expected LPS or RAS)")
    return ImageData(volume=np.ascontiguousarray(data), spacing=spacing_from_affine(affine), affine=affine,
                     meta={"format": "nrrd"})


def read_image(path: str | pathlib.Path) -> ImageData:
    """Read a NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``, ``.nhdr``) file."""
    p = pathlib.Path(path)
    name = p.name.lower()
    if not p.exists():
        raise FileNotFoundError(f"image path does not exist: {p}")
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(p)
    if name.endswith((".nrrd", ".nhdr")):
        return read_nrrd(p)
    raise ValueError(f"unsupported image format for {p.name!r}: expected .nii, .nii.gz, .nrrd or .nhdr")


def write_nifti(path: str | pathlib.Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """Write ``volume[k, j, i(, t)]`` with an LPS ``affine`` as NIfTI (RAS affine, as dcm2niix writes)."""
    import nibabel as nib

    from storage.workspace import atomic_path

    data, affine_ras = medflow_to_nifti(np.asarray(volume), np.asarray(affine))
    img = nib.Nifti1Image(np.asarray(data), affine_ras)
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    zooms = list(spacing_from_affine(affine_ras[:, :]))
    img.header.set_zooms(tuple(zooms[:3]) + tuple(1.0 for _ in range(data.ndim - 3)))
    p = pathlib.Path(path)
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"
    with atomic_path(p, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
