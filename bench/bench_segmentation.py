"""Segmentation vs the IBSI soft-tissue-sarcoma reference masks (CT, PET, MR T1; 2 patients).

Run: ``python -m bench.bench_segmentation [--data PATH] [--margin-mm 10]``.

Each method is *assisted*: it is told where the lesion is by the reference mask's
bounding box dilated by ``--margin-mm`` (the search region) and, for seeded
methods, by the reference voxel nearest the mask centroid. Methods:

* PET: isocontour at 40% and 50% of SUVmax inside the region, keeping the component
  that contains SUVmax (:func:`imaging.segment.pet_isocontour`);
* CT / MR: region growing from the seed with the interval ``mean +/- 2 SD`` of a
  5 mm sphere around it (:func:`imaging.segment.region_grow`), holes filled; and
  Otsu's threshold of the region (:func:`imaging.segment.otsu_threshold`) keeping the
  seed's side and its connected component.

Reported: Dice, HD95 (mm, symmetric surface distances) and volume difference
(segmentation minus reference, mL) from :mod:`imaging.metrics`. These are honest
figures for simple methods, not a tuned segmenter.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from functools import partial
from typing import Any

import numpy as np

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ibsi_sts_ct_pet_mr_rtstruct" / "nifti"


def search_region(ref: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """Bounding box of ``ref`` dilated by ``margin_mm`` on every side (bool mask)."""
    idx = np.argwhere(ref)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    pad = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
    lo = np.maximum(lo - pad, 0)
    hi = np.minimum(hi + pad, np.asarray(ref.shape))
    roi = np.zeros(ref.shape, bool)
    roi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return roi


def centroid_seed(ref: np.ndarray) -> tuple[int, int, int]:
    """The reference voxel nearest the mask's centroid (inside the mask even for concave shapes)."""
    idx = np.argwhere(ref)
    c = idx.mean(axis=0)
    return tuple(int(v) for v in idx[np.argmin(((idx - c) ** 2).sum(axis=1))])  # type: ignore[return-value]


def segment_pet(vol: np.ndarray, roi: np.ndarray, fraction: float) -> np.ndarray:
    from imaging import segment as S

    return np.asarray(S.pet_isocontour(vol, fraction=fraction, roi=roi, connected=True))


def segment_region_grow(vol: np.ndarray, roi: np.ndarray, seed: tuple[int, int, int], spacing: tuple[float, ...], k_sd: float = 2.0) -> np.ndarray:
    import scipy.ndimage as ndi

    from imaging import segment as S

    grid = np.meshgrid(*[(np.arange(n) - s) * sp for n, s, sp in zip(vol.shape, seed, spacing, strict=True)], indexing="ij", sparse=True)
    ball = (grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2) <= 5.0**2
    vals = vol[ball]
    lo, hi = float(vals.mean() - k_sd * vals.std()), float(vals.mean() + k_sd * vals.std())
    grown = np.asarray(S.region_grow(np.where(roi, vol, np.nan), seeds=[seed], lower=lo, upper=hi, connectivity=1))
    return ndi.binary_fill_holes(grown)


def segment_otsu(vol: np.ndarray, roi: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    import scipy.ndimage as ndi

    from imaging import segment as S

    thr = S.otsu_threshold(vol, mask=roi)
    side = (vol > thr) if vol[seed] > thr else (vol <= thr)
    lab, _ = S.label(side & roi, connectivity=1)
    return ndi.binary_fill_holes(lab == lab[seed])


def evaluate(data: pathlib.Path, margin_mm: float = 10.0) -> list[dict[str, Any]]:
    from imaging import metrics as M
    from storage.images import read_image

    rows: list[dict[str, Any]] = []
    for patient in sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith("STS_")):
        for modality in ("PET", "CT", "MR_T1"):
            img_p, ref_p = patient / f"{modality}_image.nii.gz", patient / f"{modality}_mask.nii.gz"
            if not (img_p.exists() and ref_p.exists()):
                continue
            img, refimg = read_image(img_p), read_image(ref_p)
            vol = np.asarray(img.volume, dtype=np.float32)
            ref = np.asarray(refimg.volume) > 0
            sp = tuple(float(s) for s in img.spacing)
            roi = search_region(ref, sp, margin_mm)
            seed = centroid_seed(ref)
            methods: dict[str, Any]
            if modality == "PET":
                methods = {"isocontour_40": partial(segment_pet, vol, roi, 0.4), "isocontour_50": partial(segment_pet, vol, roi, 0.5)}
            else:
                methods = {"region_grow": partial(segment_region_grow, vol, roi, seed, sp), "otsu_roi": partial(segment_otsu, vol, roi, seed)}
            for name, fn in methods.items():
                t0 = time.perf_counter()
                seg = fn()
                sec = time.perf_counter() - t0
                rows.append({
                    "patient": patient.name, "modality": modality, "method": name,
                    "dice": M.dice(seg, ref), "hd95_mm": M.hausdorff95(seg, ref, spacing=sp),
                    "volume_diff_ml": M.volume_difference(seg, ref, spacing=sp) / 1000.0,
                    "reference_ml": float(ref.sum() * np.prod(sp) / 1000.0), "seconds": sec,
                })
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    ap.add_argument("--margin-mm", type=float, default=10.0)
    ap.add_argument("--no-write", action="store_true", help="do not merge rows into bench/results.json")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"reference data not found at {args.data}; skipped")
        return []
    rows = evaluate(args.data, args.margin_mm)
    print(f"{'patient':8s} {'modality':8s} {'method':14s} {'Dice':>6s} {'HD95 mm':>8s} {'dV mL':>8s} {'ref mL':>7s}")
    for r in rows:
        print(f"{r['patient']:8s} {r['modality']:8s} {r['method']:14s} {r['dice']:6.3f} {r['hd95_mm']:8.1f} "
              f"{r['volume_diff_ml']:8.1f} {r['reference_ml']:7.1f}")
    summary = []
    for key in sorted({(r["modality"], r["method"]) for r in rows}):
        sel = [r for r in rows if (r["modality"], r["method"]) == key]
        summary.append({"operation": f"segmentation_sts_{key[0].lower()}_{key[1]}", "tool": "medflow", "mvoxel_per_s": None,
                        "ratio": None, "n_cases": len(sel),
                        "mean_dice": round(float(np.mean([r["dice"] for r in sel])), 4),
                        "mean_hd95_mm": round(float(np.mean([r["hd95_mm"] for r in sel])), 2),
                        "mean_volume_diff_ml": round(float(np.mean([r["volume_diff_ml"] for r in sel])), 2),
                        "margin_mm": args.margin_mm})
    print("\nmean over patients:")
    for s in summary:
        print(f"  {s['operation']:42s} Dice {s['mean_dice']:.3f}  HD95 {s['mean_hd95_mm']:.1f} mm  dV {s['mean_volume_diff_ml']:+.1f} mL")
    if not args.no_write:
        from bench._results import merge_results

        merge_results(summary, benchmark="bench_segmentation")
    return rows


if __name__ == "__main__":
    main()
