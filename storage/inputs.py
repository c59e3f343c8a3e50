"""Single-case inputs for the command line: image and mask from any format medflow reads.

Images: NIfTI/NRRD files, a folder holding one DICOM series, or a medflow workspace
volume (an artifact folder holding ``volume.zarr``). Masks: NIfTI/NRRD, a workspace
mask, an RTSTRUCT file (``roi`` = ROI name) or a DICOM SEG file (``roi`` = segment
label), rasterised on the image's grid.

Every result is in medflow's convention (``[slice, row, column]``, LPS affine).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from storage.images import ImageData, read_image


@dataclass
class CaseInput:
    image: ImageData
    mask: np.ndarray  # bool, on the image grid
    roi: str  # what was selected (label value or ROI name), for provenance
    image_kind: str  # "file", "dicom-series", "workspace"
    mask_kind: str  # "file", "rtstruct", "seg", "workspace"


def _is_workspace_array(p: pathlib.Path) -> bool:
    return p.is_dir() and ((p / "volume.zarr").is_dir() or (p.name.endswith(".zarr") and (p / "zarr.json").is_file()))


def _read_workspace(p: pathlib.Path) -> ImageData:
    from storage.volumes import geometry, read_numpy

    folder = p.parent if p.name.endswith(".zarr") else p
    arr, attrs = read_numpy(folder)
    affine, spacing = geometry(attrs)
    return ImageData(volume=arr, spacing=spacing, affine=affine, meta={"format": "workspace"})


def _dicom_volumes(folder: pathlib.Path):
    from storage.dicom import collect_folder

    result = collect_folder(folder)
    vols = [v for v in result.volumes if v.kind == "3d"]
    if len(vols) != 1:
        raise ValueError(f"image folder {folder} holds {len(vols)} 3-D volumes (of {len(result.volumes)} converted, "
                         f"{len(result.rejections)} files rejected); give a folder with exactly one series")
    return vols


def select_roi(mask: np.ndarray, roi: str | None, *, source: str = "mask") -> np.ndarray:
    """The boolean ROI of a mask or label image.

    ``roi=None`` takes every non-zero voxel and requires a single label; a
    numeric ``roi`` selects that label value. Named ROIs need a label table
    (RTSTRUCT/SEG), which NIfTI/NRRD masks do not have.
    """
    m = np.asarray(mask)
    labels = np.unique(m[m != 0])
    if roi is None:
        if labels.size > 1:
            raise ValueError(f"{source} holds {labels.size} labels {labels[:10].tolist()}; choose one with roi")
        sel = m != 0
    else:
        try:
            value = float(roi)
        except ValueError:
            raise ValueError(f"roi {roi!r} is not a label value; {source} is a label image without ROI names "
                             f"(labels present: {labels[:10].tolist()})") from None
        sel = m == value
    if not sel.any():
        raise ValueError(f"ROI {roi!r} is empty in {source}")
    return sel


def check_same_grid(image: ImageData, mask: ImageData, *, image_name: str = "image",
                    mask_name: str = "mask", atol_mm: float = 1e-3) -> None:
    """Raise ``ValueError`` unless image and mask share shape and geometry."""
    if image.volume.shape[:3] != mask.volume.shape[:3]:
        raise ValueError(f"image and mask grids differ: {image_name} has shape {image.volume.shape!r}, "
                         f"{mask_name} has shape {mask.volume.shape!r}")
    if not np.allclose(image.affine, mask.affine, atol=atol_mm):
        raise ValueError(f"image and mask grids differ: same shape {image.volume.shape!r} but different "
                         f"geometry;\n{image_name} affine:\n{np.array2string(image.affine, precision=4)}\n"
                         f"{mask_name} affine:\n{np.array2string(mask.affine, precision=4)}")


def _dicom_mask(path: pathlib.Path, volumes, roi: str | None) -> tuple[np.ndarray, str, str]:
    import pydicom

    from storage.dicom.rtstruct import rasterise_rtstruct
    from storage.dicom.scan import classify
    from storage.dicom.seg import convert_seg

    if path.is_dir():
        files = [f for f in sorted(path.rglob("*")) if f.is_file()]
        candidates = []
        for f in files:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            except Exception:  # noqa: BLE001 - not DICOM: skipped
                continue
            if classify(ds) in ("rtstruct", "seg"):
                candidates.append(f)
        if len(candidates) != 1:
            raise ValueError(f"mask folder {path} holds {len(candidates)} RTSTRUCT/SEG files; give one file")
        path = candidates[0]
    ds = pydicom.dcmread(path, force=True)
    kind = classify(ds)
    if kind == "rtstruct":
        masks, rejections = rasterise_rtstruct(ds, volumes)
    elif kind == "seg":
        masks, rejections = convert_seg(ds, volumes)
    else:
        raise ValueError(f"mask {path.name} is a DICOM {kind} object, not an RTSTRUCT or SEG")
    if not masks:
        reasons = sorted({r.reason for r in rejections})
        raise ValueError(f"{path.name}: no ROI could be placed on the image grid ({', '.join(reasons) or 'no ROI'}); "
                         "is it the structure set of this image series?")
    names = [m.roi_name for m in masks]
    if roi is None:
        if len(masks) > 1:
            raise ValueError(f"{path.name} holds {len(masks)} ROIs {names}; choose one with --roi NAME")
        chosen = masks[0]
    else:
        matches = [m for m in masks if m.roi_name == roi]
        if not matches:
            raise ValueError(f"ROI {roi!r} not in {path.name}; ROIs present: {names}")
        chosen = matches[0]
    return np.asarray(chosen.mask, dtype=bool), chosen.roi_name, kind


def load_case(image: str | pathlib.Path, mask: str | pathlib.Path, *, roi: str | None = None) -> CaseInput:
    """Read ``image`` and ``mask`` (see module docstring); the mask is checked to lie on the image grid."""
    image, mask = pathlib.Path(image), pathlib.Path(mask)
    for name, p in (("image", image), ("mask", mask)):
        if not p.exists():
            raise FileNotFoundError(f"{name} path does not exist: {p}")
    volumes = None
    if _is_workspace_array(image):
        img, image_kind = _read_workspace(image), "workspace"
    elif image.is_dir():
        volumes = _dicom_volumes(image)
        v = volumes[0]
        img = ImageData(volume=v.volume, spacing=tuple(v.spacing), affine=v.affine, meta={"format": "dicom"})
        image_kind = "dicom-series"
    else:
        img, image_kind = read_image(image), "file"
    if img.volume.ndim != 3:
        raise ValueError(f"{image}: features need a 3-D volume, got shape {img.volume.shape!r}")

    name = mask.name.lower()
    if _is_workspace_array(mask):
        m = _read_workspace(mask)
        check_same_grid(img, m, image_name=str(image), mask_name=str(mask))
        return CaseInput(img, select_roi(m.volume, roi, source=str(mask)), "" if roi is None else roi, image_kind,
                         "workspace")
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr")):
        m = read_image(mask)
        check_same_grid(img, m, image_name=str(image), mask_name=str(mask))
        return CaseInput(img, select_roi(m.volume, roi, source=str(mask)), "" if roi is None else roi, image_kind,
                         "file")
    if volumes is None:
        raise ValueError(f"an RTSTRUCT/SEG mask ({mask.name}) needs the DICOM series it was drawn on as --image")
    sel, label, kind = _dicom_mask(mask, volumes, roi)
    return CaseInput(image=img, mask=sel, roi=label, image_kind=image_kind, mask_kind=kind)

