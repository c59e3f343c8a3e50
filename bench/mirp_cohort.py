"""MIRP on a DICOM + RTSTRUCT cohort folder, as ``bench.bench_cohort`` times it (run in its own process).

``python -m bench.mirp_cohort --source DIR --out FEATURES.csv [--num-cpus 2]``

``DIR`` holds ``<patient>/{CT,PET,MR_T1}/{image,mask}`` (the layout of
``shared/data/sts_cohort/dicom``). For each modality one ``mirp.extract_features`` call
processes every patient's image series with its RTSTRUCT ROI ``GTV_Mass_<modality>``,
with the feature settings of :mod:`bench.bench_features` (the same mapping medflow is
given in :func:`bench.bench_cohort.medflow_reference_config`), on ``--num-cpus``
joblib processes. The feature values of every ROI are written to ``FEATURES.csv``
(columns ``sample``, ``modality``, then MIRP's feature columns).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import pathlib
import time
import warnings

import pandas as pd

from bench.bench_features import COMMON_MIRP, FEATURE_PREFIXES, MIRP_SETTINGS

#: (folder name under each patient, key of MIRP_SETTINGS, RTSTRUCT ROI name)
MODALITIES = (("CT", "CT", "GTV_Mass_CT"), ("PET", "PET", "GTV_Mass_PET"), ("MR_T1", "MR", "GTV_Mass_MR_T1"))


def run(source: pathlib.Path, *, num_cpus: int) -> pd.DataFrame:
    import mirp

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    frames = []
    for folder, key, roi in MODALITIES:
        t0 = time.perf_counter()
        parallel = {"num_cpus": num_cpus, "parallel_backend": "joblib"} if num_cpus > 1 else {}
        with contextlib.redirect_stdout(io.StringIO()):  # MIRP prints per cached discretisation
            res = mirp.extract_features(image=str(source), image_sub_folder=f"{folder}/image",
                                        mask_sub_folder=f"{folder}/mask", roi_name=roi, export_features=True,
                                        write_features=False, **parallel, **COMMON_MIRP, **MIRP_SETTINGS[key])
        for frame in res or []:
            cols = [c for c in frame.columns if c.startswith(FEATURE_PREFIXES)]
            sample = frame["sample_name"].astype(str) if "sample_name" in frame.columns else ""
            out = frame[cols].copy()
            out.insert(0, "modality", key)
            out.insert(0, "sample", sample)
            frames.append(out)
        print(f"mirp {folder}: {len(res or [])} ROIs in {time.perf_counter() - t0:.1f} s", flush=True)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        raise SystemExit(f"--source is not a folder: {args.source}")
    table = run(args.source, num_cpus=args.num_cpus)
    table.to_csv(args.out, index=False)
    print(f"{len(table)} ROIs -> {args.out}")


if __name__ == "__main__":
    main()
