"""Throughput of medflow's IBSI-1 feature extractor against MIRP on the same real ROIs.

``python -m bench.bench_features [--repeat N]``

ROIs: the 6 soft-tissue-sarcoma ROIs (STS_008 / STS_025 x CT, PET, MR T1; NIfTI image +
GTV mask) of ``shared/data/ibsi_sts_ct_pet_mr_rtstruct`` and the PyRadiomics brain1 MR
(NRRD). Settings are IBSI configuration C-like for both tools: 3D, 2 mm isotropic
trilinear interpolation (no anti-aliasing), ROI trilinear with partial-volume 0.5, all
families, GLCM/GLRLM 3D averaged + merged, zone/neighbourhood matrices 3D, exact
Moran's I / Geary's C (MIRP ``no_approximation=True``), and per modality:

* CT: rounding, re-segmentation [-1000, 400] HU, FBS 25 HU, IVH FBS 2.5 HU;
* PET: re-segmentation [0, 100] SUV, FBS 0.5 SUV, IVH FBS 0.1 SUV;
* MR: no re-segmentation, FBN 32, IVH FBN 1000.

Timing is end to end per ROI (read the image and mask files, extract; the ROI list is
processed ``--rounds`` times per timed run). Both tools get the same policy: one warm-up
extraction (per worker process too), then ``--repeat`` timed runs, median reported. Two modes:
``sequential`` (one ROI after the other, one thread) and ``2 workers`` (medflow: a
2-thread pool in one process; MIRP: a 2-process pool, since it is not thread-parallel).
Features/s = feature values returned / wall time. ``ratio`` = medflow features/s over the
tool's (1.0 on medflow's rows).

PyRadiomics is not benchmarked: ``pyradiomics==3.1.0`` does not install here (its sdist
declares version 3.0.1a1, which pip rejects, and building it fails on a missing
``cmatrices.h``).

Rows are merged into ``bench/results.json`` (operation + tool replaced, others kept).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import pathlib
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np

from bench._results import merge_results
from imaging.features import FeatureSettings, extract_features
from storage.images import read_image

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
STS = DATA / "ibsi_sts_ct_pet_mr_rtstruct" / "nifti"
BRAIN1 = DATA / "pyradiomics_brain1"
OPERATION = "ibsi1_features_config_c_like_7roi"
FEATURE_PREFIXES = ("morph_", "loc_", "stat_", "ih_", "ivh_", "cm_", "rlm_", "szm_", "dzm_", "ngt_", "ngl_")

COMMON_MF: dict[str, Any] = dict(new_spacing=(2.0, 2.0, 2.0), interpolation_dim="3d", interpolation="linear",
                                 roi_interpolation="linear", roi_partial_volume=0.5, texture_dims=("3d",))
MEDFLOW_SETTINGS: dict[str, FeatureSettings] = {
    "CT": FeatureSettings(**COMMON_MF, intensity_rounding=True, resegmentation_range=(-1000.0, 400.0),
                          discretisation="fbs", bin_width=25.0, ivh_discretisation="fbs", ivh_bin_width=2.5),
    "PET": FeatureSettings(**COMMON_MF, resegmentation_range=(0.0, 100.0), discretisation="fbs", bin_width=0.5,
                           ivh_discretisation="fbs", ivh_bin_width=0.1),
    "MR": FeatureSettings(**COMMON_MF, discretisation="fbn", bin_number=32, ivh_discretisation="fbn",
                          ivh_bin_number=1000),
}
COMMON_MIRP: dict[str, Any] = dict(
    by_slice=False, new_spacing=2.0, spline_order=1, anti_aliasing=False, roi_spline_order=1,
    roi_interpolation_mask_inclusion_threshold=0.5, base_feature_families="all",
    glcm_spatial_method=["3d_average", "3d_volume_merge"], glrlm_spatial_method=["3d_average", "3d_volume_merge"],
    glszm_spatial_method="3d", gldzm_spatial_method="3d", ngtdm_spatial_method="3d", ngldm_spatial_method="3d",
    no_approximation=True,
)
MIRP_SETTINGS: dict[str, dict[str, Any]] = {
    "CT": dict(image_modality="CT", resegmentation_intensity_range=[-1000.0, 400.0],
               base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0,
               ivh_discretisation_method="fixed_bin_size", ivh_discretisation_bin_width=2.5),
    "PET": dict(image_modality="PET", resegmentation_intensity_range=[0.0, 100.0],
                base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=0.5,
                ivh_discretisation_method="fixed_bin_size", ivh_discretisation_bin_width=0.1),
    "MR": dict(image_modality="MR", base_discretisation_method="fixed_bin_number", base_discretisation_n_bins=32,
               ivh_discretisation_method="fixed_bin_number", ivh_discretisation_n_bins=1000),
}

#: features compared between the tools to show both computed the same thing (medflow key, MIRP column prefix)
AGREEMENT = [("morph.vol", "", "morph_volume"), ("stat.mean", "", "stat_mean"),
             ("cm.joint.max", "3d_avg", "cm_joint_max_d1_3d_avg"), ("rlm.sre", "3d_vmrg", "rlm_sre_3d_v_mrg"),
             ("szm.sze", "3d", "szm_sze_3d"), ("ngl.lde", "3d", "ngl_lde_d1_a0.0_3d"),
             ("ivh.v10", "", "ivh_v10")]


def rois() -> list[tuple[str, str, pathlib.Path, pathlib.Path]]:
    """(name, modality, image, mask) of the benchmark ROIs."""
    out = []
    for patient in ("STS_008", "STS_025"):
        for mod, key in (("CT", "CT"), ("PET", "PET"), ("MR_T1", "MR")):
            out.append((f"{patient}/{mod}", key, STS / patient / f"{mod}_image.nii.gz",
                        STS / patient / f"{mod}_mask.nii.gz"))
    out.append(("brain1", "MR", BRAIN1 / "brain1_image.nrrd", BRAIN1 / "brain1_label.nrrd"))
    return out


def medflow_one(modality: str, image: pathlib.Path, mask: pathlib.Path) -> dict[tuple[str, str], float]:
    img = read_image(image)
    roi = read_image(mask).volume != 0
    table = extract_features(img.volume, roi, spacing=img.spacing, settings=MEDFLOW_SETTINGS[modality])
    return {(f, a): float(v) for f, a, v in zip(table["feature"], table["aggregation"], table["value"], strict=True)}


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def mirp_one(modality: str, image: pathlib.Path, mask: pathlib.Path) -> dict[str, float]:
    import mirp  # noqa: PLC0415  (optional benchmark dependency)

    _quiet()
    with open(os.devnull, "w") as devnull:
        saved = sys.stdout
        sys.stdout = devnull  # MIRP prints one line per cached discretisation
        try:
            res = mirp.extract_features(image=str(image), mask=str(mask), export_features=True,
                                        write_features=False, **COMMON_MIRP, **MIRP_SETTINGS[modality])
        finally:
            sys.stdout = saved
    frame = res[0]
    return {c: float(frame[c].iloc[0]) for c in frame.columns if c.startswith(FEATURE_PREFIXES)}


def _mirp_worker_init(modality: str, image: str, mask: str) -> None:
    mirp_one(modality, pathlib.Path(image), pathlib.Path(mask))  # warm-up in each worker process


def time_sequential(fn, jobs, repeat: int) -> tuple[float, int, list]:
    walls, results = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        results = [fn(m, i, k) for _n, m, i, k in jobs]
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), sum(len(r) for r in results), results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per tool and mode (median), same for both")
    parser.add_argument("--rounds", type=int, default=2,
                        help="each timed run processes the ROI list this many times (amortises pool start-up)")
    args = parser.parse_args(argv)
    from bench._common import skip

    try:
        import mirp  # noqa: F401, PLC0415
    except ImportError as exc:
        skip(f"MIRP is not installed ({exc}); scripts/bench-peers.sh installs mirp==2.7.0")
    _quiet()
    jobs = rois()
    for name, _m, img, msk in jobs:
        if not img.is_file() or not msk.is_file():
            skip(f"benchmark data missing for {name}: {img}")
    smallest = min(jobs, key=lambda j: j[2].stat().st_size)
    timed = jobs * args.rounds

    # warm-up (imports, caches) for both tools
    medflow_one(smallest[1], smallest[2], smallest[3])
    mirp_one(smallest[1], smallest[2], smallest[3])

    mf_seq, mf_n, mf_results = time_sequential(medflow_one, timed, args.repeat)
    walls = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda j: medflow_one(j[1], j[2], j[3]), timed))
        walls.append(time.perf_counter() - t0)
    mf_par = statistics.median(walls)

    mi_seq, mi_n, mi_results = time_sequential(mirp_one, timed, args.repeat)
    init = (smallest[1], str(smallest[2]), str(smallest[3]))
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, initializer=_mirp_worker_init,
                                                initargs=init) as pool:
        list(pool.map(_mirp_worker_init, [init[0]] * 2, [init[1]] * 2, [init[2]] * 2))  # both workers started
        walls = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            list(pool.map(mirp_one, [j[1] for j in timed], [j[2] for j in timed], [j[3] for j in timed]))
            walls.append(time.perf_counter() - t0)
        mi_par = statistics.median(walls)

    print(f"{len(jobs)} ROIs x {args.rounds} rounds; feature values per run: medflow {mf_n}, MIRP {mi_n}")
    print("agreement of a few features (relative difference medflow vs MIRP):")
    worst = 0.0
    for (name, _m, _i, _k), ours, theirs in zip(jobs, mf_results[: len(jobs)], mi_results[: len(jobs)],
                                                strict=True):
        diffs = []
        for key, agg, prefix in AGREEMENT:
            col = next(c for c in theirs if c.startswith(prefix))
            a, b = ours[(key, agg)], theirs[col]
            rel = abs(a - b) / max(abs(b), 1e-12)
            worst = max(worst, rel)
            diffs.append(f"{key}{':' + agg if agg else ''} {rel:.1e}")
        print(f"  {name:14s} " + ", ".join(diffs))
    print(f"  largest relative difference: {worst:.2e}")

    rows: list[dict[str, Any]] = []
    for mode, workers, mf_wall, mi_wall in (("sequential", 1, mf_seq, mi_seq), ("2workers", 2, mf_par, mi_par)):
        mf_fps = mf_n / mf_wall
        mi_fps = mi_n / mi_wall
        ratio = mf_fps / mi_fps
        print(f"{mode:10s} medflow {mf_wall:7.2f} s  {mf_fps:8.1f} features/s | MIRP {mi_wall:7.2f} s "
              f"{mi_fps:8.1f} features/s | ratio medflow/MIRP {ratio:.1f}x")
        op = f"{OPERATION}_{mode}"
        common = {"operation": op, "mvoxel_per_s": None, "n_rois": len(timed), "workers": workers}
        rows.append({**common, "tool": "medflow", "features_per_s": mf_fps, "ratio": 1.0, "seconds": mf_wall,
                     "n_features": mf_n, "repeat": args.repeat, "warmup": 1, "processes": 1,
                     "threads_per_process": workers, "max_rel_diff_vs_mirp": worst})
        rows.append({**common, "tool": "mirp-2.7.0", "features_per_s": mi_fps, "ratio": ratio, "seconds": mi_wall,
                     "n_features": mi_n, "repeat": args.repeat, "warmup": 1,
                     "processes": workers, "threads_per_process": 1})
    merge_results(rows, benchmark="bench_features",
                  run_facts={"policy": f"1 warm-up extraction + {args.repeat} timed runs per tool and mode; median",
                             "max_rel_diff_medflow_vs_mirp": worst})
    print("written to bench/results.json")
    return rows


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
